"""ONNX export of the pruned model: checked, tagged with metadata, and compared with torch.

The file firmware receives must be valid (full onnx checker with shape inference) and must compute
what the torch model computes on real inputs: parity is measured on real data and recorded.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeprune.profiling.onnx_bytes import export_onnx_bytes


def export_onnx(model: nn.Module, shape: tuple[int, ...], opset: int, metadata: dict[str, str]) -> bytes:
    """Serialised, checked ONNX for the fixed input ``shape`` (batch included), ``metadata`` in ``metadata_props``."""
    proto = onnx.load_from_string(export_onnx_bytes(model, shape, opset))
    onnx.checker.check_model(proto, full_check=True)
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return proto.SerializeToString()


def parity(model: nn.Module, onnx_bytes: bytes, inputs: torch.Tensor) -> dict:
    """Max abs / relative error and top-1 agreement between torch and onnxruntime, per sample."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model.eval()
    max_abs, scale, agree = 0.0, 0.0, 0
    with torch.no_grad():
        for x in inputs:
            ref = model(x[None]).numpy()
            got = session.run(None, {name: x[None].numpy().astype(np.float32)})[0]
            max_abs = max(max_abs, float(np.abs(ref - got).max()))
            scale = max(scale, float(np.abs(ref).max()))
            agree += int(ref.argmax() == got.argmax())
    n = len(inputs)
    return {
        "samples": n,
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / scale if scale else 0.0,
        "top1_agreement": agree / n if n else 1.0,
    }

