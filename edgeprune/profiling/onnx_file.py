"""Reading a user's ONNX file for `edgeprune profile` and `gate`: validated, with the shape to time."""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.profiling.onnx_check import ModelRejected, check_input_size, check_model_bytes, external_tensors, inline_external_data


def load_onnx(path: str | Path, batch: int | None = None, allow_external_data: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """The file's bytes and its single input's shape; every problem is a one-line UserError.

    With ``batch``, a symbolic batch dimension (what ``edgeprune export --dynamic-batch`` writes)
    is timed at that batch; any other symbolic dimension is an error. A model whose tensors are
    stored as external data is refused (a budgets file or a checkout is not always the user's own
    work) unless ``allow_external_data``: then the data files, which must be plain files beside
    the model (:func:`inline_external_data`), are read into the model and the bytes returned are
    self-contained.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"ONNX file {path} not found; pass the path of an exported model.onnx")
    blob = file.read_bytes()
    try:
        if allow_external_data:
            blob = _inlined(file, blob)
        checked = check_model_bytes(blob)
        dims = list(checked.dims)
        if dims and dims[0] is None and batch is not None:
            dims[0] = batch
        if not dims or any(d is None for d in dims):
            raise ModelRejected("its input shape is dynamic; export it with a fixed shape (or only a symbolic batch)")
        check_input_size(tuple(dims))
    except ModelRejected as exc:
        hint = " (or pass --allow-external-data for a model of your own)" if "external data" in str(exc) else ""
        raise UserError(f"{path} is not a valid ONNX model to time: {exc}{hint}") from None
    return blob, tuple(dims)


def _inlined(file: Path, blob: bytes) -> bytes:
    import onnx

    try:
        proto = onnx.load_from_string(blob)
    except Exception:
        raise ModelRejected("the bytes are not an ONNX model (protobuf parse failed); export the model to ONNX again") from None
    if not external_tensors(proto):
        return blob
    inline_external_data(file, proto)
    return proto.SerializeToString()
