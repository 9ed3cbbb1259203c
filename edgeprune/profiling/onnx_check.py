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


# The most bytes --allow-external-data inlines into one model (protobuf's own limit is 2 GiB).
MAX_EXTERNAL_BYTES = 1 << 30


def inline_external_data(path, proto) -> None:
    """Load a user's own model's external tensors into ``proto`` (the explicit opt-in of
    ``--allow-external-data``). A data file must sit beside the model: a plain file name (no
    folder, nothing hidden such as ``.git`` or ``.env``), a regular file and not a link, read
    here (never by onnx's or a runtime's own loader) at exactly the size its tensor needs, so a
    model can neither read other files nor get their bytes into an error message."""
    import re
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    folder = Path(path).parent
    total = 0
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not len(tensor.external_data):
            continue
        name = (tensor.name or "(unnamed)")[:60]
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}", location) or location in (".", ".."):
            raise ModelRejected(
                f"tensor {name!r} stores its data at {location[:80]!r}, which is not a plain file name beside the model "
                "(no folders, no hidden files); keep external data files next to the model"
            )
        try:
            dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type))
            offset, length = int(info.get("offset", "0")), info.get("length")
        except (KeyError, TypeError, ValueError):
            raise ModelRejected(f"tensor {name!r} has an external data type or offset edgeprune cannot read; save it inside the model") from None
        if dtype.kind in "OSU" or offset < 0:
            raise ModelRejected(f"tensor {name!r} has an external data type or offset edgeprune cannot read; save it inside the model")
        size = math.prod(tensor.dims) * dtype.itemsize
        if any(d < 0 for d in tensor.dims):
            raise ModelRejected(f"tensor {name!r} has a negative dimension; export the model again")
        if length is not None and length != str(size):
            raise ModelRejected(f"tensor {name!r} declares {length[:20]} bytes of external data but its shape needs {size}; export the model again")
        total += size
        if total > MAX_EXTERNAL_BYTES:
            raise ModelRejected(f"the model's external data is over {MAX_EXTERNAL_BYTES >> 20} MiB; time a smaller model")
        data = _read_external(folder / location, location, name, offset, size)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = data


def _read_external(target, location: str, name: str, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset`` of the data file ``target`` (``location`` beside the
    model), opened without following a link and only when it is a regular file."""
    import os
    import stat

    if target.is_symlink():
        raise ModelRejected(f"external data file {location[:80]!r} of tensor {name!r} is a link; put the file itself next to the model")
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        what = "a link" if target.is_symlink() else "missing"
        raise ModelRejected(f"external data file {location[:80]!r} of tensor {name!r} is {what}; put the file itself next to the model") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ModelRejected(f"external data file {location[:80]!r} of tensor {name!r} is not a regular file; put the file itself next to the model")
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ModelRejected(f"external data file {location[:80]!r} is shorter than tensor {name!r} needs; export the model again")
    return data

