"""Restricted unpickling: a pass over the opcodes first, then an unpickler that admits only named globals.

The pass (`scan`) reads every opcode without building anything and refuses what would hurt the
process before the real unpickler runs: nesting deeper than MAX_DEPTH (pickle's C unpickler and the
garbage collector recurse on it, and 300,000 nested tuples kill the process), memo indices beyond the
opcodes read (the C unpickler sizes its memo by the largest index), extension codes, and any argument
that reaches past the end of the data. The unpickler then admits only the globals its subclass names,
so a payload (`__reduce__` to `os.system`) is never even looked up.
"""
from __future__ import annotations

import pickle
import pickletools
import struct

from ...errors import CheckpointError, UnsafeCheckpointError

MAX_DEPTH = 100  # a CLIP TorchScript archive's data.pkl nests about 20 deep, a state dict 4

_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# argument readers: fixed sizes, and the length-prefixed ones (prefix size, struct format)
_PREFIXED = {pickletools.bytes1: (1, "<B"), pickletools.bytes4: (4, "<I"), pickletools.bytes8: (8, "<Q"),
             pickletools.bytearray8: (8, "<Q"), pickletools.string1: (1, "<B"), pickletools.string4: (4, "<i"),
             pickletools.unicodestring1: (1, "<B"), pickletools.unicodestring4: (4, "<I"),
             pickletools.unicodestring8: (8, "<Q"), pickletools.long1: (1, "<B"), pickletools.long4: (4, "<i")}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _Reader:
    """Sequential reads over a file object, with skipping (large payloads are never read by the scan)."""

    def __init__(self, f, size: int):
        self.f, self.size, self.position = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.position + n > self.size:
            raise CheckpointError(f"a pickle argument of {n} bytes reaches past the end of the data: truncated or corrupt")
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointError("the pickle ends early: truncated or corrupt")
        self.position += n
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.position + n > self.size:
            raise CheckpointError(f"a pickle argument of {n} bytes reaches past the end of the data: truncated or corrupt")
        self.f.seek(n, 1)
        self.position += n

    def line(self, limit: int = 4096) -> bytes:
        data = self.f.readline(limit)
        self.position += len(data)
        if not data.endswith(b"\n"):
            raise CheckpointError("a pickle text argument without its end of line: truncated or corrupt")
        return data


_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # fill the object below them


def _argument(reader, op) -> int | None:
    """Read (or skip) `op`'s argument; the memo index of a PUT or GET, else None."""
    name, kind = op.name, op.arg
    if kind is None:
        return None
    if kind in _PREFIXED:
        width, fmt = _PREFIXED[kind]
        (length,) = struct.unpack(fmt, reader.take(width))
        reader.skip(length)
    elif kind.n > 0:
        raw = reader.take(kind.n)
        if name in ("BINPUT", "BINGET"):
            return raw[0]
        if name in ("LONG_BINPUT", "LONG_BINGET"):
            return struct.unpack("<I", raw)[0]
    else:  # text up to a newline (protocol 0, GLOBAL's two lines)
        text = reader.line()
        if name in ("GLOBAL", "INST"):
            reader.line()
        if name in ("PUT", "GET"):
            try:
                return int(text)
            except ValueError:
                raise CheckpointError("a memo index that is not a number: corrupt") from None
    return None


def _effect(op, stack: list[list[int]], marks: list[int], max_depth: int) -> None:
    """`op`'s effect on the simulated stack, by pickletools' stack effect: what it takes (a MARK: all
    since it), what it leaves, and the nesting depth of what it leaves."""
    name, before, after = op.name, op.stack_before, op.stack_after
    taken: list[list[int]] = []
    extra = len(before)
    if pickletools.markobject in before:
        if not marks:
            raise CheckpointError(f"pickle opcode {name} needs a MARK and has none: corrupt")
        cut = marks.pop()
        taken = stack[cut:]
        del stack[cut:]
        extra = before.index(pickletools.markobject)
    if extra:
        if len(stack) < extra:
            raise CheckpointError(f"pickle opcode {name} on a stack too short for it: corrupt")
        taken = stack[-extra:] + taken
        del stack[-extra:]
    if not after:
        return
    if name in _IN_PLACE:  # the container keeps its cell: every reference to it sees it deepen
        cell = taken[0]
        cell[0] = max(cell[0], max((c[0] for c in taken[1:]), default=0) + 1)
    else:
        cell = [max((c[0] for c in taken), default=0) + 1]
    stack.append(cell)
    if cell[0] > max_depth:
        raise CheckpointError(f"the pickle nests containers more than {max_depth} deep, which no checkpoint "
                              "does (and which crashes Python's own unpickler)")


def scan(f, size: int, max_depth: int = MAX_DEPTH) -> None:
    """Walk the pickle in `f` (positioned at its start, `size` bytes at most) without building it;
    CheckpointError for nesting deeper than `max_depth`, a memo index out of range, an extension
    code or a truncated argument. `f` is left where it was found.

    Each object on the simulated stack is a cell holding its nesting depth, shared with the memo, so a
    container filled in place after it was stored grows for every reference to it. Immutable objects
    (tuples, frozensets: the ones Python hashes, recursively and without a depth check) are built from
    finished parts, so their depth here is exact; a list that grows deeper after it was put in another
    container is caught by the bounded walk over the result (`_check_plain` in the readers).
    """
    start = f.tell()
    reader = _Reader(f, size)
    stack: list[list[int]] = []  # a cell [depth] for each object on the unpickler's stack
    marks: list[int] = []  # stack lengths at each MARK
    memo: dict[int, list[int]] = {}
    count = 0
    while True:
        code = reader.take(1)
        op = _OPS.get(code)
        if op is None:
            raise CheckpointError(f"byte {code!r} at {reader.position - 1} is not a pickle opcode: corrupt")
        count += 1
        name, arg = op.name, _argument(reader, op)
        if name == "STOP":
            break
        if name.startswith("EXT"):
            raise UnsafeCheckpointError("refused a pickle extension code (copyreg's registry): a checkpoint "
                                        "holds only tensors and plain containers")
        if name in ("FRAME", "PROTO"):
            continue
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name in _PUTS or name == "MEMOIZE":
            if not stack:
                raise CheckpointError("a pickle memo store with nothing to store: corrupt")
            index = len(memo) if name == "MEMOIZE" else arg
            if index > count:  # the C unpickler would size its memo by it
                raise CheckpointError(f"pickle memo index {index} out of range: corrupt")
            memo[index] = stack[-1]
            continue
        if name in _GETS:
            if arg not in memo:
                raise CheckpointError(f"pickle memo index {arg} read before it was stored: corrupt")
            stack.append(memo[arg])
            continue
        if name == "DUP":
            if not stack:
                raise CheckpointError("pickle DUP on an empty stack: corrupt")
            stack.append(stack[-1])
            continue
        _effect(op, stack, marks, max_depth)  # everything else
    f.seek(start)


class Restricted(pickle.Unpickler):
    """An unpickler that admits only the globals in `allowed` (or given by `dynamic_class`)."""

    allowed: dict = {}

    def find_class(self, module, name):
        target = self.allowed.get((module, name)) or self.dynamic_class(module, name)
        if target is None:
            raise refused(module, name)
        return target

    def dynamic_class(self, module, name):
        return None


def refused(module, name) -> UnsafeCheckpointError:
    """The error for a global that no unpickler of parity's admits."""
    return UnsafeCheckpointError(f"refused to load global {module}.{name}: a checkpoint may hold only tensors, "
                                 "numbers and plain containers, so parity stopped reading (nothing in the file was run)")


def latin1(text, encoding="latin1"):
    """`_codecs.encode`, which protocol-2 pickles use for bytes: latin1 strings only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("refused _codecs.encode with anything but a latin1 string")
    return text.encode("latin1")


def load(unpickling: pickle.Unpickler, f, size: int):
    """`scan` the pickle in `f` (`size` bytes), then load it with `unpickling` (an unpickler over `f`).

    A malformed pickle makes the admitted callables fail with TypeError, KeyError, IndexError or
    AttributeError (wrong arguments, BUILD on the wrong object): these become CheckpointErrors here,
    and only here."""
    scan(f, size)
    try:
        return unpickling.load()
    except (TypeError, KeyError, IndexError, AttributeError) as e:
        detail = str(e).splitlines()[0][:120] if str(e) else "no detail"
        raise CheckpointError(f"a malformed pickle ({type(e).__name__}: {detail})") from None
