"""Checkpoint writers and the atomic write: a temporary file beside the target, checked, then renamed.

Nothing is lost on failure: the temporary file is removed, an existing output is only replaced with
`force`, and the rename is the last step, so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import struct
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import CheckpointError
from .readers import _ST_DTYPES, _STORAGES

EXTRAS_KEY = "parity@@extras"  # parity's reserved entry in a .pdparams, beside Paddle's own "...@@" entries


TILE = 256


def contiguous(a: np.ndarray) -> np.ndarray:
    """`a` in C order (not np.ascontiguousarray: it turns a 0-d array into shape [1])."""
    if a.flags.c_contiguous:
        return a
    if a.ndim == 2 and a.flags.f_contiguous:
        # a transposed Linear weight: copied tile by tile, as numpy's own strided copy is ~4x slower here
        out = np.empty(a.shape, a.dtype)
        for i in range(0, a.shape[0], TILE):
            for j in range(0, a.shape[1], TILE):
                out[i:i + TILE, j:j + TILE] = a[i:i + TILE, j:j + TILE]
        return out
    return a.copy(order="C")


def _spec(tensors: Mapping[str, np.ndarray], key: str) -> tuple[np.dtype, tuple]:
    """dtype and shape of a tensor to write, without making it where the mapping can say (a plan)."""
    if hasattr(tensors, "spec"):
        return tensors.spec(key)
    a = tensors[key]
    return a.dtype, tuple(a.shape)


def _streaming(tensors: Mapping):
    # a plan's streaming mode (one reused buffer for casts), or nothing for a plain dict
    return tensors.streaming() if hasattr(tensors, "streaming") else contextlib.nullcontext()


def _made(tensors: Mapping[str, np.ndarray], key: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """tensors[key] in C order, refused if it is not what its header (written before it) says."""
    value = contiguous(tensors[key])
    if value.dtype != dtype or tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{key}: made as {value.dtype} {list(value.shape)}, planned as {dtype} {list(shape)}")
    return value


def _bytes(a: np.ndarray) -> memoryview:
    """A C-ordered array's memory as flat bytes, without a copy."""
    return memoryview(a.reshape(-1)).cast("B")


# ---------------------------------------------------------------- .pdparams: a pickle written tensor by tensor
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
    # read-only view of a memory-mapped source (the pickle module would write that one as bytes)
    head = _fragment(function) + pickle.MARK + pickle.BYTEARRAY8 + struct.pack("<Q", raw.nbytes)
    return head, raw, _fragment(dtype) + _fragment(shape) + _fragment(order) + pickle.TUPLE + pickle.REDUCE


def write_pdparams(path: Path, tensors: Mapping[str, np.ndarray], record: str | Callable[[], str] | None) -> None:
    """A pickle of numpy arrays, as `paddle.save` writes a state dict; the record is a JSON string.

    The pickle is written one tensor at a time (a dict filled item by item), so only the tensor being
    written is in memory. Protocol 5 (Python >= 3.8, which every Paddle 2 needs) stores each buffer as it
    is, where paddle.save's protocol 4 copies it first, and `paddle.load` reads both. A Fortran-ordered
    array (a transposed Linear weight) is stored in that order, as numpy pickles it, without a copy.
    `record` may be a callable, called once the tensors are written (the source's hash may still be running).
    """
    with open(path, "wb") as f, _streaming(tensors):
        f.write(pickle.PROTO + b"\x05" + pickle.EMPTY_DICT)
        for key in tensors:
            value = tensors[key]
            head, raw, tail = _array_ops(value if value.flags.f_contiguous else contiguous(value))
            f.write(_fragment(key) + head)
            f.write(raw)
            f.write(tail + pickle.SETITEM)
            del value, raw
        if record is not None:
            text = record() if callable(record) else record
            if text is not None:
                f.write(_fragment(EXTRAS_KEY) + _fragment(text) + pickle.SETITEM)
        f.write(pickle.STOP)


# ---------------------------------------------------------------- torch zip archives, written without torch
_TORCH_STORAGES = {np.dtype(v): k for k, v in _STORAGES.items() if v != "bfloat16"}
ALIGNMENT = 64  # torch.save aligns each tensor's bytes to 64 in the file (for torch.load(mmap=True))


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if 0 <= n < 65536:
        return pickle.BININT2 + struct.pack("<H", n)
    if -2**31 <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    body = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(body)]) + body


def _text(s: str) -> bytes:
    data = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _ints(values) -> bytes:
    return pickle.MARK + b"".join(_int(v) for v in values) + pickle.TUPLE if values else pickle.EMPTY_TUPLE


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def torch_pickle(specs: list[tuple[str, np.dtype, tuple]]) -> bytes:
    """data.pkl of a torch.save'd OrderedDict of tensors, storage i holding the i-th tensor (protocol 2).

    Each tensor is `torch._utils._rebuild_tensor_v2(storage, 0, shape, C strides, False, OrderedDict())`
    with the storage as a persistent id ('storage', torch.<Type>Storage, 'i', 'cpu', numel), as torch writes it.
    """
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    out = [pickle.PROTO + b"\x02", hooks]
    for i, (key, dtype, shape) in enumerate(specs):
        strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
        storage = (pickle.MARK + _text("storage") + _global("torch", _TORCH_STORAGES[np.dtype(dtype)])
                   + _text(str(i)) + _text("cpu") + _int(math.prod(shape)) + pickle.TUPLE + pickle.BINPERSID)
        out.append(_text(key) + _global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage + _int(0)
                   + _ints(shape) + _ints(strides) + pickle.NEWFALSE + hooks + pickle.TUPLE + pickle.REDUCE
                   + pickle.SETITEM)
    out.append(pickle.STOP)
    return b"".join(out)


def _entry(archive: zipfile.ZipFile, file, name: str, data: bytes | memoryview) -> None:
    # a stored entry whose bytes (flat: bytes or a "B" memoryview) start on an ALIGNMENT boundary,
    # with the padding in an extra field, as torch does
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = len(data)
    zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then adds its own 20-byte extra field
    start = file.tell() + 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
    pad = -start % ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB', torch's padding field
    with archive.open(info, "w", force_zip64=zip64) as w:
        w.write(data)


def write_torch(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """A plain torch state dict (as `torch.save` of an OrderedDict writes it), written without torch, one
    tensor at a time; `build_model` and `torch.load(weights_only=True)` read it."""
    keys = list(tensors)
    specs = [(k, *_spec(tensors, k)) for k in keys]
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive, \
            _streaming(tensors):
        _entry(archive, f, "archive/data.pkl", torch_pickle(specs))
        _entry(archive, f, "archive/.format_version", b"1")
        _entry(archive, f, "archive/.storage_alignment", str(ALIGNMENT).encode())
        _entry(archive, f, "archive/byteorder", sys.byteorder.encode())
        for i, (key, dtype, shape) in enumerate(specs):
            _entry(archive, f, f"archive/data/{i}", _bytes(_made(tensors, key, dtype, shape)))
        _entry(archive, f, "archive/version", b"3\n")


# ---------------------------------------------------------------- safetensors, written tensor by tensor
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v != "bfloat16"}


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    """safetensors as the library writes it: a JSON header (padded to 8 bytes), then each tensor's bytes,
    widest dtype first so that every tensor is aligned; written one tensor at a time."""
    specs = {k: _spec(tensors, k) for k in tensors}
    order = sorted(specs, key=lambda k: (-specs[k][0].itemsize, k))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in order:
        dtype, shape = specs[key]
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _ST_NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f, _streaming(tensors):
        f.write(struct.pack("<Q", len(text)) + text)
        for key in order:
            f.write(_bytes(_made(tensors, key, *specs[key])))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None], check: Callable[[Path], None],
                 force: bool = False) -> None:
    """write(tmp) then check(tmp) on a temporary file in `path`'s folder, then rename it to `path`."""
    if path.exists() and not force:
        raise CheckpointError(f"{path} already exists; pass --force to replace it, or -o to write elsewhere")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write in {path.parent} ({e.strerror}); choose another "
                              "output with -o") from None
    os.close(fd)
    tmp = Path(name)
    # the writer creates the file itself: opening an existing file with truncation (even an empty one) makes
    # ext4 flush the whole file to disk when it is closed (auto_da_alloc), a cost `cp` never pays
    tmp.unlink()
    try:
        write(tmp)
        check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        if path.exists() and not force:  # appeared while we wrote
            raise CheckpointError(f"{path} already exists; pass --force to replace it")
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"{path}: writing failed ({e.strerror or e}); nothing was written") from None
    finally:
        if tmp.exists():
            tmp.unlink()
