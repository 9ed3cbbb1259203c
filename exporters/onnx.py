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

from edgeprune.tasks import outputs
from edgeprune.tasks.data import Split
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
            names = outputs.names(model(torch.zeros(shape)))
            torch.onnx.export(
                model,
                (torch.zeros(shape),),
                buffer,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: BATCH_DIM}} | {n: {0: BATCH_DIM} for n in names},
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
    """ORT's first output for ``inputs`` ``[N, ...]``, batch by batch (see :func:`_run_all`)."""
    for outs in _run_all(runner, inputs, dynamic_batch_size):
        yield outs[0]


def _run_all(runner: tuple[ort.InferenceSession, str, int | None], inputs: np.ndarray, dynamic_batch_size: int = 256):
    """Every ORT output for ``inputs`` ``[N, ...]``, fed in whatever batches the model accepts.

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
        yield [o[:n] for o in session.run(None, {name: np.ascontiguousarray(chunk, dtype=np.float32)})]


def _onnx_outputs(runner, inputs: np.ndarray) -> list[np.ndarray]:
    """Every output of the file for all of ``inputs``, each concatenated over the batches."""
    chunks = list(_run_all(runner, inputs))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))] if chunks else []


def parity(model: nn.Module, onnx_bytes: bytes, inputs: torch.Tensor) -> dict:
    """Max abs / relative error between torch and onnxruntime on ``inputs``, over every output,
    and the top-1 agreement of a classifier's logits (None for other outputs).

    A dynamic-batch model is fed in batches, so the symbolic batch is exercised, not just declared.
    """
    model.eval()
    with torch.no_grad():  # one batch: eval-mode outputs do not depend on the batch
        ref = [t.numpy() for t in outputs.flatten(model(inputs))]
    return compare_outputs(ref, _onnx_outputs(_session(onnx_bytes), inputs.numpy()), len(inputs), "ONNX")


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray], n: int, what: str) -> dict:
    """The parity numbers of a file's outputs ``got`` on ``n`` samples against torch's ``ref``
    (same order); ValueError where their shapes differ."""
    if len(got) != len(ref) or any(r.shape != g.shape for r, g in zip(ref, got)):
        raise ValueError(f"{what} outputs {[g.shape for g in got]} do not match torch's {[r.shape for r in ref]}")
    max_abs = max((float(np.abs(r - g).max()) for r, g in zip(ref, got) if r.size), default=0.0)
    scale = max((float(np.abs(r).max()) for r in ref if r.size), default=0.0)
    logits = len(ref) == 1 and ref[0].ndim == 2
    return {
        "samples": n,
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / scale if scale else 0.0,
        "top1_agreement": (float((ref[0].argmax(1) == got[0].argmax(1)).mean()) if n else 1.0) if logits else None,
    }


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime behind ``nn.Module``'s call, returning what the torch model
    returns (same tuple or dict structure): a task's ``score(model)`` then scores the file that
    ships, not the torch model it came from."""

    def __init__(self, onnx_bytes: bytes, template):
        super().__init__()
        self._runner = _session(onnx_bytes)
        self._template = template  # the torch model's output on one input: its structure

    def forward(self, x: torch.Tensor):
        got = _onnx_outputs(self._runner, x.detach().cpu().numpy())
        return outputs.unflatten(self._template, [torch.from_numpy(g) for g in got])


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
