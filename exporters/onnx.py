"""ONNX export of the pruned model: checked, slimmed, tagged with metadata, compared with torch.

The file firmware receives must be valid (full onnx checker, strict shape inference), as small as
the graph allows (onnxslim folds what the TorchScript exporter leaves behind), and must compute
what the torch model computes on real inputs: parity and accuracy are measured, never assumed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeprune.data import Split
from edgeprune.exporters.onnx_bytes import export_onnx_bytes

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Name of the batch dimension in a --dynamic-batch model.
BATCH_DIM = "batch"


def export_onnx(
    model: nn.Module,
    shape: tuple[int, ...],
    opset: int,
    metadata: dict[str, str] | None = None,
    dynamic_batch: bool = False,
) -> bytes:
    """Serialised, slimmed and checked ONNX for ``shape`` (batch included).

    ``dynamic_batch`` leaves the first dimension symbolic (``batch``) for servers that batch
    requests; otherwise the batch is fixed, which is what edge runtimes (and TensorRT engines
    built without optimisation profiles) want.
    """
    import onnxslim  # about a second to import: only paid when a model is exported

    blob = _dynamic_batch_bytes(model, shape, opset) if dynamic_batch else export_onnx_bytes(model, shape, opset)
    proto = onnxslim.slim(onnx.load_from_string(blob))
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(proto, full_check=True)
    return with_metadata(proto.SerializeToString(), metadata or {})


def _dynamic_batch_bytes(model: nn.Module, shape: tuple[int, ...], opset: int) -> bytes:
    """Like :func:`export_onnx_bytes` but with a symbolic batch: tracing with a fixed shape and
    editing the input afterwards is not enough, because constant folding bakes the traced batch
    into Reshape shapes."""
    modes = {m: m.training for m in model.modules()}
    buffer = io.BytesIO()
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model,
                (torch.zeros(shape),),
                buffer,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
                dynamo=False,
            )
    finally:
        for m, training in modes.items():
            m.training = training
    return buffer.getvalue()


def with_metadata(blob: bytes, metadata: dict[str, str]) -> bytes:
    """``blob`` with ``metadata`` as its ``metadata_props`` (existing keys replaced, others kept).

    Metadata never changes what the graph computes, so measured numbers (latency percentiles)
    can be written into the file after it was timed.
    """
    proto = onnx.load_from_string(blob)
    props = {p.key: p.value for p in proto.metadata_props} | {k: str(v) for k, v in metadata.items()}
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _session(blob: bytes) -> tuple[ort.InferenceSession, str, int | None]:
    """A CPU session, its input name and its fixed batch (None when the batch is symbolic)."""
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    batch = first.shape[0]
    return session, first.name, batch if isinstance(batch, int) else None


def _run_batches(runner: tuple[ort.InferenceSession, str, int | None], inputs: np.ndarray, dynamic_batch_size: int = 256):
    """ORT outputs for ``inputs`` ``[N, ...]``, fed in whatever batches the model accepts.

    A fixed-batch model gets exactly its batch; the last partial batch is padded with copies of
    its first item and the padding's outputs dropped.
    """
    session, name, fixed = runner
    step = fixed or dynamic_batch_size
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], fixed - n, axis=0)])
        yield session.run(None, {name: np.ascontiguousarray(chunk, dtype=np.float32)})[0][:n]


def parity(model: nn.Module, onnx_bytes: bytes, inputs: torch.Tensor) -> dict:
    """Max abs / relative error and top-1 agreement between torch and onnxruntime on ``inputs``.

    A dynamic-batch model is fed in batches, so the symbolic batch is exercised, not just declared.
    """
    model.eval()
    with torch.no_grad():  # one batch: eval-mode outputs do not depend on the batch
        ref = model(inputs).numpy()
    got = np.concatenate(list(_run_batches(_session(onnx_bytes), inputs.numpy())))
    max_abs = float(np.abs(ref - got).max()) if len(ref) else 0.0
    scale = float(np.abs(ref).max()) if len(ref) else 0.0
    n = len(inputs)
    return {
        "samples": n,
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / scale if scale else 0.0,
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()) if n else 1.0,
    }


def onnx_accuracy(onnx_bytes: bytes, split: Split, advance: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy of the ONNX model run by onnxruntime on ``split``: what ships is what is scored.

    ``advance(n)`` is called after each chunk of ``n`` items (for a progress bar).
    """
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    runner = _session(onnx_bytes)
    correct = 0
    for x, y in split.batches(1024):
        logits = np.concatenate(list(_run_batches(runner, x.numpy())))
        correct += int((logits.argmax(1) == y.numpy()).sum())
        if advance is not None:
            advance(len(y))
    return correct / len(split)
