"""Reading a user's ONNX file for `edgeprune profile` and `gate`: validated, with the shape to time."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeprune.errors import UserError


def load_onnx(path: str | Path, batch: int | None = None) -> tuple[bytes, tuple[int, ...]]:
    """The file's bytes and its single input's shape; every problem is a one-line UserError.

    With ``batch``, a symbolic batch dimension (what ``edgeprune export --dynamic-batch`` writes)
    is timed at that batch; any other symbolic dimension is an error.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"ONNX file {path} not found; pass the path of an exported model.onnx")
    blob = file.read_bytes()
    try:
        proto = onnx.load_from_string(blob)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf and checker errors come in many types
        raise UserError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:160]}); export it again") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; edgeprune times single-input models")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else None for d in dims]
    if shape and shape[0] is None and batch is not None:
        shape[0] = batch
    if not shape or any(d is None for d in shape):
        raise UserError(
            f"{path} has a dynamic input shape ({[d.dim_param or d.dim_value for d in dims]}); export it with a fixed shape"
        )
    return blob, tuple(shape)
