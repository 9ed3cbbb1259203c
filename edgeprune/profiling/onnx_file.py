"""Reading a user's ONNX file for `edgeprune profile`: validated, with a fixed input shape."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeprune.errors import UserError


def load_onnx(path: str) -> tuple[bytes, tuple[int, ...]]:
    """The file's bytes and its single input's shape; every problem is a one-line UserError."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"ONNX file {path} not found; pass the path of an exported model.onnx")
    blob = file.read_bytes()
    try:
        proto = onnx.load_from_string(blob)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UserError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:200]}); export it again") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; edgeprune profiles single-input models")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims)
    if not shape or any(d <= 0 for d in shape):
        raise UserError(
            f"{path} has a dynamic input shape ({[d.dim_param or d.dim_value for d in dims]}); export it with a fixed shape"
        )
    return blob, shape
