"""Validate .tflite bytes from someone else (an agent upload) before LiteRT sees them.

LiteRT's interpreter trusts the flatbuffer it is given, and a .tflite model can name things that
are not in it: custom operators (code registered by whoever builds the interpreter, such as
TensorFlow's Flex ops), external buffers (weights in files named by the model, read from the
agent's disk), buffers at offsets past the file. So the structure is walked here, in pure Python
with every offset bounds-checked, before any runtime is loaded, and what cannot be validated is
refused: a model must carry the TFLite identifier ``TFL3`` and schema version 3, use only LiteRT's
builtin operators, keep every weight inside the bytes, hold no field this schema does not know,
and take one fixed-shape float32 input. The walk costs at most a few reads per byte of the upload
(shared tables are counted each time they are reached), and it lists at most
:data:`MAX_ENTRIES` tables and indices in all (a real CNN has a few thousand), so a crafted file
can make it neither long nor large. Fields this walk does not reach (operator options,
quantization, metadata) are left to LiteRT's own flatbuffer verifier, which refuses a malformed
buffer before the interpreter is built.

Torch-free and runtime-free: the agent runs it in its own process, the runtime only in the
measuring child (:mod:`edgeprune.profiling.isolated`).
"""

from __future__ import annotations

import struct

from edgeprune.profiling.onnx_check import MAX_INPUT_ELEMENTS, ModelRejected, check_input_size

IDENTIFIER = b"TFL3"
# The highest BuiltinOperator of the schema this was written against (ai-edge-litert 2.3:
# STABLEHLO_CASE = 209). A newer code is an operator this check knows nothing of: refused.
MAX_BUILTIN_CODE = 209
_CUSTOM, _DELEGATE, _FLOAT32 = 32, 51, 0
# Tables and indices listed over the whole walk: a crafted vector of a million empty tables costs
# no reads but a Python object each, in the agent's own process, which has no memory cap.
MAX_ENTRIES = 500_000
# Fields per table in that schema; a table with more is from a schema this check does not know.
# Model 8, 9 and Tensor 10 are external buffers (weights in other files); Operator 5, 9, 10 the
# options of custom operators.
_FIELDS = {"Model": 10, "SubGraph": 6, "Tensor": 11, "Operator": 14, "OperatorCode": 4, "Buffer": 3}
_REFUSED = {"Model": (8, 9), "Tensor": (10,), "Operator": (5, 9, 10)}


class _Table:
    """One flatbuffer table at ``pos``, its vtable checked to lie inside the bytes."""

    def __init__(self, reader: _Reader, pos: int, kind: str):
        self.r, self.pos, self.kind = reader, pos, kind
        self.vtable = pos - reader.num("<i", pos)
        size = reader.num("<H", self.vtable)
        if size < 4 or size % 2:
            raise ModelRejected(f"a {kind} table of the .tflite model is malformed")
        reader.need(self.vtable, size)
        fields = (size - 4) // 2
        reader.spend(fields)
        present = [i for i in range(fields) if self._offset(i)]
        extra = [i for i in present if i >= _FIELDS[kind] or i in _REFUSED.get(kind, ())]
        if extra:
            raise ModelRejected(f"the .tflite model's {kind} uses field {extra[0]}, which edgeprune cannot validate (external or custom data, or a newer schema); convert it without them")

    def _offset(self, field: int) -> int:
        entry = 4 + 2 * field
        if entry >= self.r.num("<H", self.vtable):
            return 0
        return self.r.num("<H", self.vtable + entry)

    def scalar(self, field: int, fmt: str, default: int = 0) -> int:
        off = self._offset(field)
        return self.r.num(fmt, self.pos + off) if off else default

    def ref(self, field: int) -> int | None:
        """The position an offset field points at (None: absent)."""
        off = self._offset(field)
        if not off:
            return None
        at = self.pos + off
        return at + self.r.num("<I", at)

    def vector(self, field: int, width: int) -> tuple[int, int]:
        """(first element's position, length) of a vector field; (0, 0) when absent."""
        at = self.ref(field)
        if at is None:
            return 0, 0
        length = self.r.num("<I", at)
        self.r.need(at + 4, length * width)
        self.r.spend(length)
        return at + 4, length

    def ints(self, field: int) -> list[int]:
        start, n = self.vector(field, 4)
        self.r.list(n)
        return list(struct.unpack_from(f"<{n}i", self.r.blob, start)) if n else []

    def tables(self, field: int, kind: str) -> list[_Table]:
        start, n = self.vector(field, 4)
        self.r.list(n)
        return [_Table(self.r, p + self.r.num("<I", p), kind) for p in range(start, start + 4 * n, 4)]


class _Reader:
    def __init__(self, blob: bytes):
        self.blob = blob
        self.budget = 4 * len(blob) + 4096  # fields and elements read, in all: a few per byte
        self.entries = MAX_ENTRIES

    def list(self, count: int) -> None:
        """Account for ``count`` more tables or indices held in memory (:data:`MAX_ENTRIES`)."""
        self.entries -= count
        if self.entries < 0:
            raise ModelRejected(f"the .tflite model lists more than {MAX_ENTRIES} tables and indices; edgeprune times CNNs far smaller")

    def need(self, pos: int, size: int) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.blob):
            raise ModelRejected("the .tflite model points outside its own bytes; it is truncated or crafted")

    def num(self, fmt: str, pos: int) -> int:
        self.need(pos, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.blob, pos)[0]

    def spend(self, elements: int) -> None:
        self.budget -= elements
        if self.budget < 0:
            raise ModelRejected("the .tflite model's tables refer to each other more often than its size allows; it is crafted")


def check_tflite_bytes(blob: bytes, max_input_elements: int = MAX_INPUT_ELEMENTS) -> tuple[int, ...]:
    """The model's one fixed input shape, once the bytes pass every rule of the module docstring;
    :class:`~edgeprune.profiling.onnx_check.ModelRejected` with a one-line reason otherwise."""
    if len(blob) < 8 or blob[4:8] != IDENTIFIER:
        raise ModelRejected("not a .tflite model (no TFL3 identifier); send the bytes of a converted .tflite file")
    reader = _Reader(blob)
    model = _Table(reader, reader.num("<I", 0), "Model")
    if model.scalar(0, "<I") != 3:
        raise ModelRejected("the .tflite model is not of schema version 3")
    codes = [_builtin(code) for code in model.tables(1, "OperatorCode")]
    buffers = model.tables(4, "Buffer")
    for buffer in buffers:
        buffer.vector(0, 1)
        offset, size = buffer.scalar(1, "<Q"), buffer.scalar(2, "<Q")
        if offset > 1:  # the weights after the flatbuffer, in the same bytes (models over 2 GB)
            reader.need(offset, size)
    subgraphs = model.tables(2, "SubGraph")
    if not subgraphs:
        raise ModelRejected("the .tflite model has no subgraph")
    for subgraph in subgraphs:
        _check_subgraph(subgraph, len(codes), len(buffers))
    shape = _input_shape(subgraphs[0])
    check_input_size(shape, max_input_elements)
    return shape


def _builtin(code: _Table) -> int:
    """An operator code's builtin operator (the larger of the old int8 and the new int32 field,
    as LiteRT reads it), refused where it is custom, the delegate placeholder or unknown."""
    op = max(code.scalar(0, "<b"), code.scalar(3, "<i"))
    if op == _CUSTOM or code.ref(1) is not None:
        raise ModelRejected("the .tflite model uses a custom operator; edgeprune runs only LiteRT's builtin operators")
    if op == _DELEGATE or not 0 <= op <= MAX_BUILTIN_CODE:
        raise ModelRejected(f"the .tflite model uses operator code {op}, which is not a builtin operator edgeprune knows")
    return op


def _check_subgraph(subgraph: _Table, n_codes: int, n_buffers: int) -> None:
    """Every operator names a known operator code and existing tensors; every tensor an existing
    buffer."""
    tensors = subgraph.tables(0, "Tensor")
    for tensor in tensors:
        if tensor.scalar(2, "<I") >= n_buffers:
            raise ModelRejected("a tensor of the .tflite model names a buffer it does not have")
        tensor.ints(0)
        tensor.ints(7)
    indices = subgraph.ints(1) + subgraph.ints(2)
    for op in subgraph.tables(3, "Operator"):
        if op.scalar(0, "<I") >= n_codes:
            raise ModelRejected("an operator of the .tflite model names an operator code it does not have")
        indices += op.ints(1) + op.ints(2) + op.ints(8)
    if any(not -1 <= i < len(tensors) for i in indices):
        raise ModelRejected("the .tflite model refers to a tensor it does not have")


def _input_shape(main: _Table) -> tuple[int, ...]:
    inputs = main.ints(1)
    if len(inputs) != 1 or inputs[0] < 0:
        raise ModelRejected(f"the .tflite model has {len(inputs)} inputs; edgeprune times models with one image input")
    tensor = main.tables(0, "Tensor")[inputs[0]]
    shape, signature = tensor.ints(0), tensor.ints(7)
    if tensor.scalar(1, "<b") != _FLOAT32:
        raise ModelRejected("the .tflite model's input is not float32; edgeprune times float32 models")
    if not shape or any(d <= 0 for d in shape) or (signature and signature != shape):
        raise ModelRejected("the .tflite model's input shape is not fixed; convert it with a fixed shape")
    return tuple(shape)
