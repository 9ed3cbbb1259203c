"""INT8 post-training quantization of the exported ONNX model, in the formats a runtime may favour.

Quantizing the ONNX file (not the torch model) means the INT8 model is derived from exactly the
FP32 file that was checked and timed. Calibration uses TRAIN images only; the test split stays
untouched for the accuracy gate. Which format runs fastest depends on the runtime and the shapes,
so the exporter times each on the target and ships the fastest (``exporters/package.py``):

* ``nncf-qdq``: NNCF PTQ with fast bias correction, QuantizeLinear/DequantizeLinear pairs around
  the float ops (runs in every ONNX Runtime provider, imports into TensorRT). NNCF is an optional
  dependency (``pip install 'edgeprune[int8]'``), imported only here.
* ``ort-qdq``: ONNX Runtime's ``quantize_static``, QDQ, per-channel weights.
* ``ort-qoperator``: ``quantize_static`` in the operator format (QLinearConv, QLinearAdd, ...):
  integer kernels chosen at export, which ONNX Runtime's CPU provider runs without relying on
  its QDQ fusion rules; not for TensorRT, which takes QDQ only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeprune.errors import UserError

if TYPE_CHECKING:  # the CLI reads DEFAULT_CALIBRATION_SAMPLES without importing torch
    from edgeprune.tasks.data import Split

# NNCF's own default calibration size: enough for stable activation ranges on CNNs.
DEFAULT_CALIBRATION_SAMPLES = 300
# Each format and how it is made (the manifest's calibration.method).
INT8_METHODS = {
    "nncf-qdq": "nncf.quantize (PTQ, QDQ, fast bias correction)",
    "ort-qdq": "onnxruntime quantize_static (QDQ, MinMax, per-channel s8 weights, u8 activations)",
    "ort-qoperator": "onnxruntime quantize_static (QOperator, MinMax, per-channel s8 weights, u8 activations)",
}
INT8_FORMATS = tuple(INT8_METHODS)
# What TensorRT can import: explicit quantization is QDQ only.
QDQ_FORMATS = ("nncf-qdq", "ort-qdq")


def require_nncf():
    """The nncf module, or a one-line UserError: it is an optional dependency (hundreds of MB)."""
    try:
        import nncf
    except ImportError:
        raise UserError("--int8 needs NNCF, which is not installed; run `pip install 'edgeprune[int8]'` (or `pip install nncf`)") from None
    return nncf


def calibration_items(split: Split, samples: int, batch: int, seed: int = 0) -> list[np.ndarray]:
    """A seeded random sample of ``split`` as float32 batches of ``batch`` items, the shape the
    model takes (a fixed-batch model cannot be fed anything else)."""
    subset = split.subset(max(batch, samples), seed=seed)
    items = []
    for x, _ in subset.batches(batch):
        if len(x) == batch:
            items.append(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    return items


def nncf_available() -> bool:
    try:
        require_nncf()
    except UserError:
        return False
    return True


def quantize_int8(
    onnx_bytes: bytes, calibration: list[np.ndarray], input_name: str = "input", progress: bool = True, fmt: str = "nncf-qdq"
) -> bytes:
    """INT8 model in format ``fmt`` (one of :data:`INT8_FORMATS`) calibrated on ``calibration``.

    The result is checked with the full ONNX checker; whether it still computes the right thing
    is measured by the caller (parity and test accuracy), never assumed.
    """
    import onnx

    if fmt == "nncf-qdq":
        quantized = _nncf(onnx_bytes, calibration, input_name, progress)
    elif fmt in ("ort-qdq", "ort-qoperator"):
        quantized = _ort(onnx_bytes, calibration, input_name, fmt)
    else:
        raise ValueError(f"unknown INT8 format {fmt!r}; choose one of {', '.join(INT8_FORMATS)}")
    onnx.checker.check_model(quantized, full_check=True)
    return quantized.SerializeToString()


def _nncf(onnx_bytes: bytes, calibration: list[np.ndarray], input_name: str, progress: bool):
    """NNCF draws its progress bars on rich's global console and has no switch for them, so
    ``progress=False`` quiets that console while it runs (edgeprune's own is a separate one)."""
    import onnx
    import rich

    nncf = require_nncf()
    model = onnx.load_from_string(onnx_bytes)
    dataset = nncf.Dataset(calibration, lambda item: {input_name: item})
    shared, was_quiet = rich.get_console(), rich.get_console().quiet
    shared.quiet = was_quiet or not progress
    try:
        return nncf.quantize(model, dataset, subset_size=len(calibration))
    finally:
        shared.quiet = was_quiet


def _ort(onnx_bytes: bytes, calibration: list[np.ndarray], input_name: str, fmt: str):
    """ONNX Runtime's static quantization: its pre-processing (shape inference, graph clean-up),
    MinMax calibration, per-channel signed weights, unsigned activations (the u8s8 kernels of
    its x86 CPU provider). It works on files, so in a private temporary folder."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {input_name: item}

    with tempfile.TemporaryDirectory(prefix="edgeprune-int8-") as folder:
        source, prepared, out = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared), str(out), _Reader(),
            quant_format=QuantFormat.QDQ if fmt == "ort-qdq" else QuantFormat.QOperator,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        return onnx.load_from_string(out.read_bytes())
