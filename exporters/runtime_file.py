"""The target runtime's own file, delivered next to ``model.onnx`` where the target does not run
ONNX (:attr:`~edgeprune.profiling.targets.Profile.model_format`): converted from the finished
model the way the search converted its candidates, timed on the target in place of the ONNX file
(it is what the target runs), checked against torch on the parity inputs in its runtime on this
host, and named in report.json and the manifest with its sha256 and the runtime's version.

One entry per format in :data:`FORMATS`: the file name, the runtime package the manifest names and
how to run the file on the host. LiteRT's ``model.tflite`` and ExecuTorch's ``model.pte`` are
here; another runtime adds its own entry and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeprune.exporters.measured import measured_bytes
from edgeprune.exporters.onnx import compare_outputs
from edgeprune.profiling.fingerprint import package_version
from edgeprune.tasks import outputs

Run = Callable[[bytes, np.ndarray], list[np.ndarray]]


def _run_tflite(blob: bytes, batch: np.ndarray) -> list[np.ndarray]:
    """The .tflite file's outputs for one batch, by LiteRT's interpreter (XNNPACK) on this host."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - an extra, as the conversion

    interpreter = Interpreter(model_content=blob, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]


def _run_pte(blob: bytes, batch: np.ndarray) -> list[np.ndarray]:
    """The .pte program's outputs for one batch, by ExecuTorch's runtime (XNNPACK) on this host."""
    from executorch.runtime import Runtime  # noqa: PLC0415 - an extra, as the conversion

    method = Runtime.get().load_program(blob).load_method("forward")
    return [t.numpy() for t in method.execute([torch.from_numpy(batch)])]


@dataclass(frozen=True)
class RuntimeFormat:
    file: str
    distribution: str  # the runtime's package: its version goes into the report and the manifest
    run: Run


FORMATS: dict[str, RuntimeFormat] = {
    "tflite": RuntimeFormat("model.tflite", "ai-edge-litert", _run_tflite),
    "pte": RuntimeFormat("model.pte", "executorch", _run_pte),
}


@dataclass
class RuntimeFile:
    """The runtime's file and what was checked on it (its latency is the FP32 variant's)."""

    model_format: str
    file: str
    blob: bytes
    runtime: str
    runtime_version: str | None
    parity: dict

    def summary(self) -> dict:
        """report.json's ``export.runtime_file``."""
        return {
            "file": self.file, "format": self.model_format, "sha256": hashlib.sha256(self.blob).hexdigest(), "bytes": len(self.blob),
            "runtime": self.runtime, "runtime_version": self.runtime_version, "parity_vs_torch": self.parity,
        }


def runtime_file(model: nn.Module, shape: tuple[int, ...], opset: int, model_format: str, parity_inputs: torch.Tensor) -> RuntimeFile | None:
    """``model`` in the target's own format, checked against torch; None for an ONNX target."""
    if model_format == "onnx":
        return None
    if model_format not in FORMATS:
        raise ValueError(f"no deliverable file for the model format '{model_format}'")
    fmt = FORMATS[model_format]
    blob = measured_bytes(model, shape, opset, model_format)
    return RuntimeFile(model_format, fmt.file, blob, fmt.distribution, package_version(fmt.distribution), _parity(model, fmt.run, blob, parity_inputs, shape[0]))


def _parity(model: nn.Module, run: Run, blob: bytes, inputs: torch.Tensor, batch: int) -> dict:
    """As :func:`edgeprune.exporters.onnx.parity`, the file fed ``batch`` samples at a time (its
    batch is fixed)."""
    model.eval()
    usable = inputs[: len(inputs) - len(inputs) % batch]
    with torch.no_grad():
        ref = [t.numpy() for t in outputs.flatten(model(usable))]
    chunks = [run(blob, usable[i:i + batch].numpy()) for i in range(0, len(usable), batch)]
    got = [np.concatenate(parts) for parts in zip(*chunks)] if chunks else []
    return compare_outputs(ref, got, len(usable), "the runtime file's")
