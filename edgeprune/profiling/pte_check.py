"""The check an ExecuTorch program (.pte) passes before the runtime sees it (agent uploads).

Torch-free and dependency-free: the bytes are read as the FlatBuffer that ExecuTorch's schema
(``executorch/schema/program.fbs``, file identifier ``ET12``) describes, every offset bounds-checked
here, so a crafted file is refused with a reason instead of reaching the runtime's C++ loader.
A .pte holds no code of its own, but it names what runs it, so these rules are about safety:

* **XNNPACK only.** Every delegate must be ``XnnpackBackend``. The runtime's wheel also registers
  other backends (OpenVINO, QNN), whose payloads load libraries and blobs of their own; a model
  from the network runs only on the delegate the target measures.
* **Nothing outside the file.** A tensor may say its data lives in an external ``.ptd`` file
  (``TensorDataLocation.EXTERNAL``); such a program is refused, and the measuring child never
  passes a data file either. Every delegate payload and data segment must lie inside the upload.
* **One fixed float input.** One method, ``forward``, with one static fp32 tensor input, whose
  element count stays under :data:`~edgeprune.profiling.onnx_check.MAX_INPUT_ELEMENTS`.

The child then loads the program with the runtime's own FlatBuffer verifier
(``Verification.InternalConsistency``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgeprune.profiling.onnx_check import MAX_INPUT_ELEMENTS, ModelRejected, check_input_size

IDENTIFIER = b"ET12"
DELEGATE = "XnnpackBackend"
_HEADER_MAGIC = b"eh00"
_TENSOR = 5  # KernelTypes: NONE=0, Null, Int, Bool, Double, Tensor
_FLOAT = 6  # ScalarType.FLOAT
_EXTERNAL = 1  # TensorDataLocation.EXTERNAL
_INLINE, _SEGMENT = 0, 1  # DataLocation of a delegate's payload
# Vector elements listed over the whole check: a crafted vector of a million empty tables costs
# no bytes to speak of but a Python object each, in the agent's own process (no memory cap).
MAX_ENTRIES = 500_000


@dataclass(frozen=True)
class CheckedProgram:
    dims: tuple[int, ...]  # the one input's fixed shape
    delegates: int  # XNNPACK delegate calls: 0 means XNNPACK took none of the graph


class _Buffer:
    """Bounds-checked reads of FlatBuffer tables, vectors and strings; any offset outside the
    bytes is a ModelRejected, never an IndexError or a read of something else."""

    def __init__(self, data: bytes):
        self.data = data
        self.entries = MAX_ENTRIES

    def read(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise ModelRejected("not a well-formed ExecuTorch program: an offset points outside the file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, int, int]:
        """(table position, vtable position, vtable size) of the table at ``pos``."""
        vtable = pos - self.read("<i", pos)
        return pos, vtable, self.read("<H", vtable)

    def field(self, table: tuple[int, int, int], index: int) -> int | None:
        """Where field ``index`` of ``table`` is stored, None when absent."""
        pos, vtable, size = table
        slot = 4 + 2 * index
        offset = self.read("<H", vtable + slot) if slot + 2 <= size else 0
        return pos + offset if offset else None

    def scalar(self, table, index: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, index)
        return default if at is None else self.read(fmt, at)

    def ref(self, table, index: int) -> int | None:
        """The position an offset field points to (a table, vector or string), None when absent."""
        at = self.field(table, index)
        return None if at is None else at + self.read("<I", at)

    def vector(self, table, index: int, width: int = 4) -> list[int]:
        """Element positions of a vector field (empty when absent)."""
        at = self.ref(table, index)
        if at is None:
            return []
        count = self.read("<I", at)
        if at + 4 + count * width > len(self.data):
            raise ModelRejected("not a well-formed ExecuTorch program: a vector runs past the end of the file")
        self.entries -= count
        if self.entries < 0:
            raise ModelRejected(f"the ExecuTorch program lists more than {MAX_ENTRIES} entries; edgeprune times CNNs far smaller")
        return [at + 4 + i * width for i in range(count)]

    def tables(self, table, index: int) -> list[tuple[int, int, int]]:
        return [self.table(p + self.read("<I", p)) for p in self.vector(table, index)]

    def string(self, table, index: int) -> str:
        at = self.ref(table, index)
        if at is None:
            return ""
        count = self.read("<I", at)
        if at + 4 + count > len(self.data):
            raise ModelRejected("not a well-formed ExecuTorch program: a string runs past the end of the file")
        return self.data[at + 4 : at + 4 + count].decode("utf-8", "replace")


def check_program_bytes(data: bytes, max_input_elements: int = MAX_INPUT_ELEMENTS) -> CheckedProgram:
    """The rules of the module docstring; ModelRejected (one line) for anything else."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise ModelRejected(f"not an ExecuTorch program: a .pte starts with the FlatBuffer identifier {IDENTIFIER.decode()}")
    buf = _Buffer(data)
    segment_bytes = _segment_bytes(buf)
    program = buf.table(buf.read("<I", 0))
    plans = buf.tables(program, 1)
    if len(plans) != 1 or buf.string(plans[0], 0) != "forward":
        raise ModelRejected("the ExecuTorch program must have exactly one method, forward")
    plan = plans[0]
    values = buf.tables(plan, 2)
    tensors = [_tensor(buf, value) for value in values]
    if any(_external(buf, t) for t in tensors if t is not None):
        raise ModelRejected("the ExecuTorch program keeps tensor data in an external file; send a self-contained .pte")
    dims = _input_dims(buf, plan, tensors)
    delegates = buf.tables(plan, 7)
    _check_delegates(buf, delegates, len(buf.vector(program, 3)), len(buf.vector(program, 4)))
    for segment in buf.tables(program, 4):
        if buf.scalar(segment, 0, "<Q") + buf.scalar(segment, 1, "<Q") > segment_bytes:
            raise ModelRejected("not a well-formed ExecuTorch program: a data segment lies outside the file")
    check_input_size(dims, max_input_elements)
    return CheckedProgram(dims, len(delegates))


def _segment_bytes(buf: _Buffer) -> int:
    """Bytes of segment data the extended header declares (0: none), after checking it lies in
    the file."""
    data = buf.data
    if data[8:12] != _HEADER_MAGIC:
        return 0
    length = buf.read("<I", 12)
    program_size, base = buf.read("<Q", 16), buf.read("<Q", 24)
    size = buf.read("<Q", 32) if length >= 32 else len(data) - base
    if program_size > len(data) or (base and (base < program_size or base + size > len(data))):
        raise ModelRejected("not a well-formed ExecuTorch program: its header declares more bytes than the file holds")
    return size if base else 0


def _tensor(buf: _Buffer, value) -> tuple[int, int, int] | None:
    if buf.scalar(value, 0, "<B") != _TENSOR:
        return None
    at = buf.ref(value, 1)
    return None if at is None else buf.table(at)


def _external(buf: _Buffer, tensor) -> bool:
    """Whether the tensor's ``extra_tensor_info`` places its data outside the file."""
    info = buf.ref(tensor, 9)
    return info is not None and buf.scalar(buf.table(info), 2, "<b") == _EXTERNAL


def _input_dims(buf: _Buffer, plan, tensors: list) -> tuple[int, ...]:
    inputs = [buf.read("<i", p) for p in buf.vector(plan, 3)]
    if len(inputs) != 1 or not 0 <= inputs[0] < len(tensors) or tensors[inputs[0]] is None:
        raise ModelRejected("the ExecuTorch program must take exactly one tensor input")
    tensor = tensors[inputs[0]]
    dims = tuple(buf.read("<i", p) for p in buf.vector(tensor, 2))
    if buf.scalar(tensor, 0, "<b") != _FLOAT or buf.scalar(tensor, 8, "<b") != 0 or not dims or any(d <= 0 for d in dims):
        raise ModelRejected("the ExecuTorch program's input must be one float32 tensor of a fixed shape")
    return dims


def _check_delegates(buf: _Buffer, delegates: list, inline: int, segments: int) -> None:
    for delegate in delegates:
        name = buf.string(delegate, 0)
        if name != DELEGATE:
            raise ModelRejected(f"the ExecuTorch program delegates to {name[:40]!r}; only {DELEGATE} is run here")
        processed = buf.ref(delegate, 1)
        if processed is None:
            raise ModelRejected("not a well-formed ExecuTorch program: a delegate has no payload")
        reference = buf.table(processed)
        location, index = buf.scalar(reference, 0, "<b"), buf.scalar(reference, 1, "<I")
        if location not in (_INLINE, _SEGMENT) or index >= (inline if location == _INLINE else segments):
            raise ModelRejected("not a well-formed ExecuTorch program: a delegate's payload lies outside the file")
