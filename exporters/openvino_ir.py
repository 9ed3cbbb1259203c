"""OpenVINO IR (``model.xml`` + ``model.bin``) of an ONNX file, for OpenVINO targets
(``backend: openvino``): the deliverable next to ``model.onnx``.

The OpenVINO backend times the ONNX bytes, read into OpenVINO inside the worker; the IR is
``openvino.convert_model`` of those same bytes (the same ONNX front end), saved with
``compress_to_fp16=False`` so the weights are the FP32 ones that were timed (``save_model``
would halve them to FP16 by default). An IR is two files, so it is written by ``save_model``
into a private temporary folder and read back: the package writes every file of the output
folder at once (:func:`edgeprune.files.atomic_write_all`).

The IR is run on this host from memory (the XML as bytes, the weights as a tensor), never from a
path: nothing is read from disk beside what was handed in. ``openvino`` is an extra
(``pip install 'edgeprune[openvino]'``), imported lazily.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeprune.errors import UserError

INSTALL_HINT = "pip install 'edgeprune[openvino]'"
XML_FILE = "model.xml"
BIN_FILE = "model.bin"


def _openvino():
    try:
        import openvino  # noqa: PLC0415 - an extra: only OpenVINO targets deliver an IR
    except ImportError:
        raise UserError(f"writing model.xml/model.bin for an OpenVINO target needs openvino, which is not installed; {INSTALL_HINT}") from None
    return openvino


def onnx_to_ir(onnx_bytes: bytes) -> tuple[bytes, bytes]:
    """``(model.xml, model.bin)`` of ``onnx_bytes``, FP32 weights kept as they are."""
    ov = _openvino()
    model = ov.convert_model(io.BytesIO(onnx_bytes))
    with tempfile.TemporaryDirectory(prefix="edgeprune-ir-") as tmp:
        ov.save_model(model, Path(tmp) / XML_FILE, compress_to_fp16=False)
        return (Path(tmp) / XML_FILE).read_bytes(), (Path(tmp) / BIN_FILE).read_bytes()


def ir_runner(xml: bytes, weights: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function from one input batch to the IR's outputs, compiled once for this host's CPU with
    the x86-openvino profile's settings (one thread, FP32: OpenVINO would run bf16 where the CPU
    has it), the IR read from memory."""
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        result = request.infer([np.ascontiguousarray(batch, dtype=np.float32)])
        return [np.array(result[out]) for out in compiled.outputs]

    return run
