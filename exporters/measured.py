"""The bytes a target's backend measures, made from a candidate network on the host: ONNX for
ONNX Runtime, OpenVINO and TensorRT (each reads ONNX itself), the runtime's own format where a
runtime cannot read ONNX. The search converts each candidate once, on a cache miss; the backend,
here or on the device's agent, only runs what it receives, so the device needs no torch.
"""

from __future__ import annotations

import torch

from edgeprune.exporters.onnx_bytes import export_onnx_bytes


def measured_bytes(model: torch.nn.Module, input_shape: tuple[int, ...], opset: int, model_format: str = "onnx") -> bytes:
    """``model`` at the fixed ``input_shape`` in ``model_format`` (a profile's
    :attr:`~edgeprune.profiling.targets.Profile.model_format`)."""
    if model_format == "onnx":
        return export_onnx_bytes(model, input_shape, opset)
    if model_format == "tflite":  # LiteRT (edgeprune[litert]): imported only by who measures it
        from edgeprune.exporters.tflite import export_tflite_bytes  # noqa: PLC0415

        return export_tflite_bytes(model, input_shape)
    if model_format == "pte":  # ExecuTorch + XNNPACK (edgeprune[executorch]): imported the same way
        from edgeprune.exporters.pte import export_pte_bytes  # noqa: PLC0415

        return export_pte_bytes(model, input_shape)
    raise ValueError(f"no converter to the model format '{model_format}'")
