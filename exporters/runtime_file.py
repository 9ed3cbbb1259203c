"""The target runtime's own deliverable, written next to ``model.onnx``: ``model.tflite`` for LiteRT,
``model.pte`` for ExecuTorch, ``model.xml`` + ``model.bin`` (OpenVINO IR) for OpenVINO.

One entry per backend in :data:`DELIVERABLES`: its files (with their roles in report.json's
``artifacts``), the runtime package the manifest names, how the files are made and how they run on
this host. The package (:mod:`edgeprune.exporters.package`), the manifest and the model card read
only this entry, so another runtime adds its entry here and nothing else.

A runtime that cannot read ONNX (LiteRT, ExecuTorch: :attr:`~edgeprune.profiling.targets.Profile.model_format`)
times its own file, converted from the finished model the way the search converted its candidates,
so that file is what is timed in place of ``model.onnx`` (:attr:`RuntimeFile.timed`). OpenVINO times
the ONNX bytes, read into OpenVINO in its worker; its IR is converted from those very bytes. Every
deliverable is checked against torch on the parity inputs in its runtime on this host, and scored
there on the test data (:mod:`edgeprune.exporters.runtime_score`).
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
from edgeprune.profiling.targets import MODEL_FORMATS
from edgeprune.tasks import outputs

Runner = Callable[[np.ndarray], list[np.ndarray]]  # one input batch -> the file's outputs


def _tflite_runner(blob: bytes) -> Runner:
    """The .tflite file, loaded once in LiteRT's interpreter (XNNPACK, one thread) on this host."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - an extra, as the conversion

    interpreter = Interpreter(model_content=blob, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outs = [o["index"] for o in interpreter.get_output_details()]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        interpreter.set_tensor(index, np.ascontiguousarray(batch, dtype=np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(o) for o in outs]

    return run


def _pte_runner(blob: bytes) -> Runner:
    """The .pte program's ``forward``, loaded once by ExecuTorch's runtime (XNNPACK) on this host."""
    from executorch.runtime import Runtime  # noqa: PLC0415 - an extra, as the conversion

    method = Runtime.get().load_program(blob).load_method("forward")
    return lambda batch: [t.numpy().copy() for t in method.execute([torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))])]


def _ir_runner(xml: bytes, weights: bytes) -> Runner:
    from edgeprune.exporters.openvino_ir import ir_runner  # noqa: PLC0415 - an extra

    return ir_runner(xml, weights)


def _ir_files(model: nn.Module, shape: tuple[int, ...], opset: int, onnx_bytes: bytes | None) -> tuple[bytes, ...]:
    from edgeprune.exporters.openvino_ir import onnx_to_ir  # noqa: PLC0415 - an extra

    return onnx_to_ir(onnx_bytes if onnx_bytes is not None else measured_bytes(model, shape, opset, "onnx"))


def _converted(model_format: str) -> Callable[..., tuple[bytes, ...]]:
    """The maker of a runtime's one file: the candidates' converter (:func:`measured_bytes`)."""
    return lambda model, shape, opset, onnx_bytes: (measured_bytes(model, shape, opset, model_format),)


@dataclass(frozen=True)
class Deliverable:
    model_format: str
    files: tuple[tuple[str, str], ...]  # (role in report.json's artifacts, file name); the first is the model
    distribution: str  # the runtime's package: its version goes into the report and the manifest
    make: Callable[..., tuple[bytes, ...]]  # (model, shape, opset, the ONNX bytes or None) -> the files' bytes, in order
    runner: Callable[..., Runner]  # the files' bytes, in order -> a function of one batch, run on this host


# Keyed by the profile's backend: a target whose backend is absent ships model.onnx alone.
DELIVERABLES: dict[str, Deliverable] = {
    "litert": Deliverable("tflite", (("tflite", "model.tflite"),), "ai-edge-litert", _converted("tflite"), _tflite_runner),
    "executorch": Deliverable("pte", (("pte", "model.pte"),), "executorch", _converted("pte"), _pte_runner),
    "openvino": Deliverable("openvino-ir", (("openvino_ir", "model.xml"), ("openvino_weights", "model.bin")), "openvino", _ir_files, _ir_runner),
}


def deliverable_files() -> dict[str, str]:
    """role -> file name of every runtime's deliverable: an export that did not make one says so
    (None in report.json's artifacts) and removes a stale copy from an earlier export."""
    return {role: name for d in DELIVERABLES.values() for role, name in d.files}


@dataclass
class RuntimeFile:
    """The runtime's files and what was checked on them (their latency is the FP32 variant's)."""

    deliverable: Deliverable
    contents: tuple[bytes, ...]
    runtime_version: str | None
    timed: bool  # the backend times these bytes in place of model.onnx (else the ONNX they came from)
    batch: int  # the batch the files were made for: they are fed that many samples at a time
    parity: dict | None = None
    accuracy: dict | None = None  # runtime_score.score_runtime_file's, once scored

    @property
    def model_format(self) -> str:
        return self.deliverable.model_format

    @property
    def file(self) -> str:
        return self.deliverable.files[0][1]

    @property
    def blob(self) -> bytes:
        return self.contents[0]

    def files(self) -> dict[str, bytes]:
        return {name: data for (_, name), data in zip(self.deliverable.files, self.contents)}

    def artifacts(self) -> dict[str, str]:
        return dict(self.deliverable.files)

    def runner(self) -> Runner:
        return self.deliverable.runner(*self.contents)

    def outputs(self, inputs: np.ndarray, run: Runner) -> list[np.ndarray]:
        """Every output for ``inputs`` ``[N, ...]``, fed ``batch`` samples at a time (the files' batch
        is fixed): the last partial chunk is padded with copies of its first sample, whose outputs
        are dropped."""
        chunks = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch - n, axis=0)])
            chunks.append([o[:n] for o in run(chunk)])
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def summary(self) -> dict:
        """report.json's ``export.runtime_file``: ``file``, ``sha256`` and ``bytes`` describe the model
        file (the one a runtime loads), ``files`` every file the runtime needs."""
        files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in self.files().items()}
        return {
            "file": self.file, "format": self.model_format, **files[self.file], "files": files, "timed": self.timed,
            "runtime": self.deliverable.distribution, "runtime_version": self.runtime_version,
            "parity_vs_torch": self.parity, "accuracy": self.accuracy,
        }


def runtime_file(
    model: nn.Module, shape: tuple[int, ...], opset: int, backend: str, parity_inputs: torch.Tensor, onnx_bytes: bytes | None = None
) -> RuntimeFile | None:
    """``model`` as ``backend``'s deliverable, checked against torch in its runtime; None for a
    backend that runs ``model.onnx`` as it is. ``onnx_bytes``: the ONNX file a runtime that reads
    ONNX (OpenVINO) converts, the one that was timed (exported here when not given)."""
    if backend not in DELIVERABLES:
        if MODEL_FORMATS.get(backend, "onnx") != "onnx":
            raise ValueError(f"no deliverable file for the backend '{backend}'")
        return None
    d = DELIVERABLES[backend]
    native = RuntimeFile(d, d.make(model, shape, opset, onnx_bytes), package_version(d.distribution), MODEL_FORMATS[backend] == d.model_format, shape[0])
    native.parity = _parity(model, native, parity_inputs)
    return native


def _parity(model: nn.Module, native: RuntimeFile, inputs: torch.Tensor) -> dict:
    """As :func:`edgeprune.exporters.onnx.parity`, in the file's runtime on this host."""
    model.eval()
    with torch.no_grad():
        ref = [t.numpy() for t in outputs.flatten(model(inputs))]
    return compare_outputs(ref, native.outputs(inputs.numpy(), native.runner()), len(inputs), "the runtime file's")
