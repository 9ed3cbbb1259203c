"""Convert a candidate network to a .tflite flatbuffer in memory, for LiteRT targets
(``backend: litert``): what the search measures and what ``model.tflite`` holds.

The converter is Google's ``litert-torch`` (formerly ai-edge-torch): it goes PyTorch →
``torch.export`` → StableHLO → TFLite without TensorFlow, is the maintained successor of the
TFLite converters, and keeps the PyTorch signature. The .tflite model's one input is therefore the
same float32 NCHW tensor the rest of the pipeline feeds (``1x3x32x32`` for the demo); the converter
puts a TRANSPOSE to NHWC inside the graph, which XNNPACK runs with the rest, so the measured
latency includes the layout change a deployment that feeds NCHW pays. The alternative route,
ONNX → TensorFlow → TFLite (onnx2tf), needs TensorFlow itself and converts a converted graph.

One conversion of mobilenet_v2 at 3x32x32 took 11-17 s on this shared 2-core VM (the ONNX export
of the same model 1.8 s): it happens once per candidate the cache has not seen. ``litert-torch`` is
an extra (``pip install 'edgeprune[litert]'``), imported lazily.
"""

from __future__ import annotations

import os

import torch

from edgeprune.errors import UserError
from edgeprune.exporters.eval_mode import evaluated

INSTALL_HINT = "pip install 'edgeprune[litert]'"


def _converter():
    # Its per-stage progress lines and the converter's per-model log line would interleave with the
    # search's own output for every candidate; a user may turn them back on by setting these.
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        import litert_torch  # noqa: PLC0415 - an extra: only LiteRT targets convert to .tflite
    except ImportError:
        raise UserError(f"converting to .tflite for a LiteRT target needs litert-torch, which is not installed; {INSTALL_HINT}") from None
    return litert_torch


def export_tflite_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` in eval mode, for the fixed float32 ``input_shape`` (NCHW, as fed to it), as
    .tflite bytes. The caller's model is left as it was: converted on a CPU copy when it lives on
    another device, every module's training flag restored."""
    litert_torch = _converter()
    with evaluated(model, cpu=True) as model:
        try:
            with torch.no_grad():
                converted = litert_torch.convert(model, (torch.zeros(input_shape),))
        except Exception as exc:  # the converter's own errors are of many kinds; the model is the user's
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"litert-torch cannot convert this model to .tflite: {reason}") from exc
    return bytes(converted.model_content())
