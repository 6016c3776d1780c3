"""Paddle's `.pdparams`: a pickle of numpy arrays in plain containers, read and written without Paddle.

Read through the restricted unpickler: numpy arrays of plain numeric dtypes, numpy scalars, strings,
numbers and containers, nothing else. Written one tensor at a time (numpy's protocol-5 form), so only the
tensor in hand is in memory; `paddle.load` reads what is written.
"""
from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from typing import Callable, Mapping, NamedTuple

import numpy as np

from ...errors import CheckpointError, UnsafeCheckpointError
from . import unpickler
from .raw import RawCheckpoint
from .source import Source, Stored

EXTRAS_KEY = "parity@@extras"  # parity's reserved entry in a .pdparams, beside Paddle's own "...@@" entries
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch.save's pre-1.6 format
NUMERIC = frozenset("biuf")  # bool, signed and unsigned integers, floats: what a tensor holds


class _NDArrayType:  # stands in for numpy.ndarray: not callable, so a pickle cannot build arrays its own way
    pass


_NDARRAY = _NDArrayType()


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError(f"refused to rebuild an array of type {type(subtype).__name__}")
    return np.ndarray((0,), np.uint8)  # ndarray.__setstate__ (BUILD) then sets shape, dtype and bytes


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise UnsafeCheckpointError("refused a numpy dtype not given by name")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise CheckpointError(f"unknown numpy dtype {spec[:20]!r}") from None
    if dtype.kind not in NUMERIC or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeCheckpointError(f"refused numpy dtype {spec[:20]!r}: a tensor holds plain numbers")
    return np.dtype(dtype.str)  # a fresh descriptor: BUILD on it never touches numpy's shared ones


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise UnsafeCheckpointError("refused a numpy scalar that is not plain bytes of a plain dtype")
    return np.frombuffer(data, dtype=dtype)[0]


def _check_form(plain_buffer: bool, dtype, shape, order) -> None:
    """The checks of numpy's protocol-5 form of an array, `_frombuffer(buffer, dtype, shape, order)`."""
    if not plain_buffer or not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC or order not in ("C", "F"):
        raise UnsafeCheckpointError("refused a numpy buffer that is not plain bytes of a plain dtype")
    if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape):
        raise CheckpointError("a numpy array with an impossible shape")


def _frombuffer(buffer, dtype, shape, order="C"):  # numpy's protocol-5 form of an array
    _check_form(isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)), dtype, shape, order)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _tuple(items=()):  # paddle.save writes a tensor inside nested containers as tuple((name, array))
    if not isinstance(items, (tuple, list)):
        raise UnsafeCheckpointError("refused builtins.tuple of anything but a tuple or list")
    return tuple(items)


class NumpyUnpickler(unpickler.Restricted):
    allowed = {("collections", "OrderedDict"): OrderedDict, ("_codecs", "encode"): unpickler.latin1,
               ("builtins", "tuple"): _tuple,
               ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _dtype,
               **{(f"numpy.{core}.multiarray", name): f
                  for core in ("core", "_core")  # numpy 1 and numpy 2 spell the module differently
                  for name, f in (("_reconstruct", _reconstruct), ("scalar", _scalar))},
               **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")}}


def check_plain(obj, depth: int = 0) -> int:
    """Refuse anything but containers, numeric arrays, numbers and strings, nested at most 50 deep (a
    container holding itself included); returns the bytes of the arrays met, each array counted once."""
    if depth > 50:
        raise CheckpointError("containers nested more than 50 deep (or one that holds itself)")
    if isinstance(obj, dict):
        return sum(check_plain(k, depth + 1) + check_plain(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(check_plain(v, depth + 1) for v in obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in NUMERIC or obj.dtype.fields is not None:
            raise UnsafeCheckpointError(f"refused an array of dtype {obj.dtype.str}: a tensor holds plain numbers")
        return obj.nbytes
    if isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        return 0
    if isinstance(obj, Stored):  # its bytes as stored (a bfloat16 tensor widens when read)
        return obj.size * obj.stored.itemsize
    raise CheckpointError(f"unexpected {type(obj).__name__} object in the pickle")


class Placed(NamedTuple):
    """An array of a pickle left unread: its dtype, shape and memory order, and where its bytes lie."""

    dtype: np.dtype
    shape: tuple
    fortran: bool  # Fortran order that is not also C order (numpy's flags: a vector is both)
    offset: int
    nbytes: int


class _Span(NamedTuple):  # a BYTEARRAY8 buffer, skipped
    offset: int
    nbytes: int


def _placed(buffer, dtype, shape, order="C") -> Placed:  # _frombuffer's checks, on a buffer left unread
    _check_form(isinstance(buffer, _Span), dtype, shape, order)
    if math.prod(shape) * dtype.itemsize != buffer.nbytes:
        raise CheckpointError(f"a numpy array of shape {list(shape)} whose buffer holds {buffer.nbytes} bytes")
    fortran = order == "F" and 0 not in shape and sum(d > 1 for d in shape) > 1
    return Placed(dtype, shape, fortran, buffer.offset, buffer.nbytes)


class _Placing(pickle._Unpickler):
    """pickle's own pure-Python unpickler (the C one reads every buffer into fresh memory), restricted as
    NumpyUnpickler is, whose arrays are left unread: each BYTEARRAY8 buffer is skipped and the array
    comes out as a `Placed`. For parity's check of what it wrote; a file of anyone else's is read whole."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file)
        self.file = file

    def find_class(self, module, name):
        target = NumpyUnpickler.allowed.get((module, name))
        if target is None:
            raise unpickler.refused(module, name)
        if target is _reconstruct:
            raise CheckpointError("an array in the pickle's protocol-2 form where parity wrote protocol 5")
        return _placed if target is _frombuffer else target

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        if self._unframer.current_frame is not None:  # then the bytes would lie in the frame, not the file
            raise CheckpointError("a buffer inside a pickle frame, where parity writes none")
        self.append(_Span(self.file.tell(), n))
        self.file.seek(n, io.SEEK_CUR)  # `scan` has checked that it lies within the data

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def read(source: Source, unread: bool = False):
    """The pickle's content, arrays as numpy arrays; with `unread`, as `Placed` (where each array's bytes
    lie, never read: a check that hashes them in place)."""

    f = source.window()
    content = unpickler.load(_Placing(f) if unread else NumpyUnpickler(f), f, source.size)
    if isinstance(content, int) and content == LEGACY_TORCH_MAGIC:
        raise CheckpointError("torch's legacy pre-1.6 (non-zip) format is not read; re-save it with a "
                              "current torch (torch.save(torch.load(f, weights_only=True), new_file))")
    return RawCheckpoint("pdparams", content)


# ---------------------------------------------------------------- writing, one tensor at a time
def _fragment(obj) -> bytes:
    # the opcodes of one small object, position-independent: no memo (fast mode), no PROTO, FRAME or STOP
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.fast = True
    pickler.dump(obj)
    data = buffer.getvalue()
    body = data[11:] if data[2:3] == pickle.FRAME else data[2:]
    assert body.endswith(pickle.STOP)
    return body[:-1]


def _array_ops(a: np.ndarray) -> tuple[bytes, memoryview, bytes]:
    """The pickle of `a` as numpy's protocol 5 writes it (`_frombuffer(buffer, dtype, shape, order)`),
    in three parts: opcodes before the buffer's bytes, the bytes, opcodes after."""
    function, (buffer, dtype, shape, order) = a.__reduce_ex__(5)[:2]
    raw = buffer.raw()
    # always as a bytearray, so that what is loaded is writable, even where the array written was a
    # read-only view (the pickle module would write that one as bytes)
    head = _fragment(function) + pickle.MARK + pickle.BYTEARRAY8 + struct.pack("<Q", raw.nbytes)
    return head, raw, _fragment(dtype) + _fragment(shape) + _fragment(order) + pickle.TUPLE + pickle.REDUCE


def write(f, tensors: Mapping[str, np.ndarray], record: str | Callable[[], str | None] | None,
          wrap: tuple[str, str] | None = None) -> None:
    """A pickle of numpy arrays, as `paddle.save` writes a state dict; the record is a JSON string.

    Written one tensor at a time (a dict filled item by item). Protocol 5 (Python >= 3.8, which every
    Paddle 2 needs) stores each buffer as it is, where paddle.save's protocol 4 copies it first, and
    `paddle.load` reads both. A Fortran-ordered array (a transposed Linear weight) is stored in that order,
    as numpy pickles it, without a copy. `record` may be a callable, called once the tensors are written.
    `wrap` (key, prefix): the tensors go into a dict under `key`, each name behind `prefix` (PASSL's
    `{'state_dict': {'model.<name>': ...}}`); the record stays at the top level, beside it.
    """
    from .source import contiguous

    f.write(pickle.PROTO + b"\x05" + pickle.EMPTY_DICT)
    if wrap is not None:
        f.write(_fragment(wrap[0]) + pickle.EMPTY_DICT)
    prefix = wrap[1] if wrap is not None else ""
    for key in tensors:
        value = tensors[key]
        head, raw, tail = _array_ops(value if value.flags.f_contiguous else contiguous(value))
        f.write(_fragment(prefix + key) + head)
        f.write(raw)
        f.write(tail + pickle.SETITEM)
        del value, raw
    if wrap is not None:
        f.write(pickle.SETITEM)
    if record is not None:
        text = record() if callable(record) else record
        if text is not None:
            f.write(_fragment(EXTRAS_KEY) + _fragment(text) + pickle.SETITEM)
    f.write(pickle.STOP)
