"""The one check every ONNX model passes before any runtime sees it (agent uploads, gate, profile).

Torch-free. Two rules are about safety rather than format:

* **No external data.** A tensor may say its bytes live in another file (``data_location:
  EXTERNAL``, ``location: ../../etc/passwd``); ONNX Runtime resolves that path against the
  process's working folder and reads it, and its error text then carries the file's bytes. A
  model from anyone but the user is therefore refused if any tensor anywhere in it (initializers,
  sparse initializers, constant attributes, subgraphs, functions) is stored outside the file.
* **A bounded input.** The declared input shape decides how much memory the timing loop
  allocates; ``1x3x100000x100000`` would be a 120 GB request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# 2**26 float32 values = 256 MiB: far above any edge CNN input (1x3x1024x1024 is 3.1 M).
MAX_INPUT_ELEMENTS = 1 << 26


class ModelRejected(ValueError):
    """The bytes are not a model edgeprune will hand to a runtime; the message says why."""


@dataclass(frozen=True)
class CheckedModel:
    proto: object  # onnx.ModelProto
    input_name: str
    dims: tuple[int | None, ...]  # None where the dimension is symbolic


def _all_tensors(message) -> list:
    """Every TensorProto anywhere inside ``message``: initializers, sparse tensors, node and
    function attributes and their defaults, subgraphs at any depth, training info. Walked over the
    protobuf fields generically, so a place the ONNX spec adds later is not a place to hide in."""
    import onnx

    found, stack = [], [message]
    while stack:
        current = stack.pop()
        if isinstance(current, onnx.TensorProto):
            found.append(current)
            continue
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            if repeated:
                stack.extend(value)
            else:
                stack.append(value)
    return found


def external_tensors(proto) -> list[str]:
    """Names of the tensors in ``proto`` whose data is stored outside the model bytes."""
    import onnx

    return [
        t.name or "(unnamed)"
        for t in _all_tensors(proto)
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0
    ]


def check_model_bytes(blob: bytes, max_input_elements: int = MAX_INPUT_ELEMENTS) -> CheckedModel:
    """Parse, refuse external data, run ``onnx.checker`` and check the single input.

    Raises :class:`ModelRejected` with a one-line reason that never quotes the bytes of any file.
    """
    import onnx

    if not blob:
        raise ModelRejected("the model is empty; send the bytes of an exported .onnx file")
    try:
        proto = onnx.load_from_string(blob)
    except Exception:  # protobuf DecodeError and friends
        raise ModelRejected("the bytes are not an ONNX model (protobuf parse failed); export the model to ONNX again") from None
    external = external_tensors(proto)
    if external:
        raise ModelRejected(
            f"{len(external)} tensor(s) (e.g. {external[0][:60]!r}) are stored as external data, which "
            "edgeprune refuses because it makes the runtime read other files; save the model with all "
            "tensors inside it (onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelRejected(f"onnx.checker rejects it ({first}); export the model to ONNX again") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelRejected(f"the model has {len(inputs)} inputs; edgeprune times single-input models")
    shape = inputs[0].type.tensor_type.shape
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim)
    check_input_size(tuple(d for d in dims if d is not None), max_input_elements)  # symbolic ones are checked once filled in
    return CheckedModel(proto=proto, input_name=inputs[0].name, dims=dims)


def check_input_size(shape: tuple[int, ...], max_input_elements: int = MAX_INPUT_ELEMENTS) -> None:
    """The shape a model will be timed at (a symbolic batch filled in) stays within the cap."""
    if math.prod(shape) > max_input_elements:
        raise ModelRejected(
            f"the input shape {'x'.join(str(d) for d in shape)} has more than {max_input_elements} elements; "
            "time the model at the input size it runs at on the device"
        )


def inline_external_data(path, proto) -> None:
    """Load a user's own model's external tensors into ``proto`` (the explicit opt-in of
    ``--allow-external-data``), only from files inside the model's own folder."""
    from pathlib import Path

    from onnx.external_data_helper import load_external_data_for_model

    folder = Path(path).resolve().parent
    for tensor in _all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            target = (folder / entry.value).resolve()
            if Path(entry.value).is_absolute() or not target.is_relative_to(folder):
                raise ModelRejected(
                    f"tensor {tensor.name[:60]!r} stores its data at {entry.value[:80]!r}, outside the model's "
                    "folder; keep external data files next to the model"
                )
            if not target.is_file():
                raise ModelRejected(f"external data file {entry.value[:80]!r} of tensor {tensor.name[:60]!r} is missing")
    load_external_data_for_model(proto, str(folder))

