"""INT8 post-training quantization of the exported ONNX model with NNCF (QDQ format).

Quantizing the ONNX file (not the torch model) means the INT8 model is derived from exactly the
FP32 file that was checked and timed, and QDQ graphs run in every ONNX Runtime provider and import
into TensorRT. Calibration uses TRAIN images only; the test split stays untouched for the accuracy
gate. NNCF is an optional dependency (``pip install 'edgeprune[int8]'``), imported only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeprune.errors import UserError

if TYPE_CHECKING:  # the CLI reads DEFAULT_CALIBRATION_SAMPLES without importing torch
    from edgeprune.data import Split

# NNCF's own default calibration size: enough for stable activation ranges on CNNs.
DEFAULT_CALIBRATION_SAMPLES = 300


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


def quantize_int8(onnx_bytes: bytes, calibration: list[np.ndarray], input_name: str = "input", progress: bool = True) -> bytes:
    """QDQ INT8 model calibrated on ``calibration`` (NNCF PTQ with fast bias correction).

    The result is checked with the full ONNX checker; whether it still computes the right thing
    is measured by the caller (parity and test accuracy), never assumed. NNCF draws its progress
    bars on rich's global console and has no switch for them, so ``progress=False`` quiets that
    console while it runs (edgeprune's own console is a separate one).
    """
    import onnx
    import rich

    nncf = require_nncf()
    model = onnx.load_from_string(onnx_bytes)
    dataset = nncf.Dataset(calibration, lambda item: {input_name: item})
    shared, was_quiet = rich.get_console(), rich.get_console().quiet
    shared.quiet = was_quiet or not progress
    try:
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
    finally:
        shared.quiet = was_quiet
    onnx.checker.check_model(quantized, full_check=True)
    return quantized.SerializeToString()
