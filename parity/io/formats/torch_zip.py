"""torch's zip checkpoints (`torch.save` since torch 1.6, and TorchScript archives): read and written
without torch.

Reading checks the archive before anything in it is believed: each name once (torch reads the first
of two equal names, zipfile the last), each entry's bytes inside the file and apart from every other
entry's, a tensor storage stored (torch writes them uncompressed) and exactly as long as the pickle
says. `data.pkl` goes through the restricted unpickler, and each tensor becomes a `Stored`: its bytes
are read, and their CRC-32 checked, only when the tensor is used. A tensor must own its storage and
must not overlap itself (a stride of 0 would let 632 bytes claim a gigabyte): so every tensor's bytes
lie in the file once.
"""
from __future__ import annotations

import io
import math
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from typing import Callable, Mapping

import numpy as np

from ...errors import CheckpointError
from . import bounded_json, unpickler
from .archive import Archive, Entry, ScriptObject
from .raw import RawCheckpoint
from .source import Source, Stored, contiguous
from .torchscript import Declarations, script_state

STORAGES = {"FloatStorage": "float32", "HalfStorage": "float16", "DoubleStorage": "float64",
            "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
            "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}
RECORD_ENTRY = "parity.json"  # parity's record (config, source, dtypes) beside data.pkl in a zip it writes


# ---------------------------------------------------------------- data.pkl
class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _Storage:
    """A storage entry named in the pickle: its place in the file, not yet read."""

    def __init__(self, key: str, entry: Entry, dtype: np.dtype, numel: int, bf16: bool):
        self.key, self.entry, self.dtype, self.numel, self.bf16 = key, entry, dtype, numel, bf16
        self.used = False


def _dense_extent(size: tuple, stride: tuple) -> int | None:
    """The number of elements a tensor spans, or None where two of its indices meet one element."""
    span = 1
    for s, st in sorted(((s, st) for s, st in zip(size, stride) if s > 1), key=lambda p: p[1]):
        if st < span:
            return None
        span = st * (s - 1) + span
    return span


def _tensor(source: Source, storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2): a Stored view of one storage, checked against its bounds."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor without a storage")
    if not all(isinstance(x, int) for x in (offset, *size, *stride)) or len(size) != len(stride):
        raise CheckpointError("a tensor with a size, stride or offset that is not a list of integers")
    size, stride = tuple(size), tuple(stride)
    if min(size + stride + (offset,), default=0) < 0 or len(size) > 64:
        raise CheckpointError(f"a tensor with impossible size {list(size)[:8]} / stride {list(stride)[:8]}")
    if storage.used:
        raise CheckpointError(f"two tensors share storage {storage.key}: parity reads each tensor's bytes once "
                              "(save each tensor as its own copy, e.g. t.clone())")
    storage.used = True
    n = math.prod(size)
    extent = _dense_extent(size, stride) if n else 0
    if extent is None:
        raise CheckpointError(f"a tensor of size {list(size)} with strides {list(stride)} overlaps itself "
                              f"(storage {storage.key}): refused, its elements would be read more than once")
    if offset + extent > storage.numel:
        raise CheckpointError(f"a tensor of shape {list(size)} reaches past the end of its storage "
                              f"({storage.numel} elements): truncated or corrupt")
    contiguous_ = all(st == math.prod(size[i + 1:]) for i, (s, st) in enumerate(zip(size, stride)) if s > 1)
    e = storage.entry
    return Stored(source, e.name, e.start, e.length, e.crc, storage.dtype, size, offset,
                  None if contiguous_ else stride, bf16=storage.bf16)


def _parameter(data, *_ignored):  # nn.Parameter -> its data
    return data


def _same(value, *_ignored):
    return value


class TorchUnpickler(unpickler.Restricted):
    allowed = {("collections", "OrderedDict"): OrderedDict, ("_codecs", "encode"): unpickler.latin1,
               ("torch._utils", "_rebuild_tensor_v2"): _tensor, ("torch._utils", "_rebuild_tensor"): _tensor,
               ("torch._utils", "_rebuild_parameter"): _parameter,
               ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
               ("torch", "Size"): tuple,
               **{("torch", name): _StorageType(dtype) for name, dtype in STORAGES.items()},
               **{("torch.jit._pickle", name): _same for name in
                  ("restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")}}

    def __init__(self, file, archive: Archive, prefix: str, script: bool, big_endian: bool):
        super().__init__(file)
        self.archive, self.prefix, self.script, self.big_endian = archive, prefix, script, big_endian
        self.storages: dict[str, _Storage] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module, name):
        target = super().find_class(module, name)
        if target is _tensor:  # each tensor becomes a Stored in this archive's source
            return lambda *args: _tensor(self.archive.source, *args)
        return target

    def dynamic_class(self, module, name):
        if not (self.script and module.startswith("__torch__")):
            return None
        qualname = f"{module}.{name}"
        if qualname not in self.classes:  # a plain placeholder class per TorchScript class
            self.classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
        return self.classes[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
            raise CheckpointError(f"unknown persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            if name not in self.archive.entries:
                raise CheckpointError(f"storage {key} is missing from the archive: truncated or corrupt")
            entry = self.archive.stored(name)
            bf16 = kind.dtype == "bfloat16"
            dtype = np.dtype("uint16" if bf16 else kind.dtype)
            if self.big_endian:
                dtype = dtype.newbyteorder(">")
            if entry.size != numel * dtype.itemsize:
                raise CheckpointError(f"storage {key} holds {entry.size} bytes where its tensors' {numel} "
                                      f"{kind.dtype} elements take {numel * dtype.itemsize}: corrupt")
            self.storages[key] = _Storage(key, entry, dtype, numel, bf16)
        elif self.storages[key].dtype.itemsize != np.dtype("uint16" if kind.dtype == "bfloat16" else kind.dtype).itemsize:
            raise CheckpointError(f"storage {key} is named with two different dtypes: corrupt")
        return self.storages[key]


def _prefix(archive: Archive) -> str:
    pkls = sorted(n for n in archive.entries if n.endswith("/data.pkl") and n.count("/") == 1)
    if not pkls:
        raise CheckpointError("a zip archive without a data.pkl: not a torch checkpoint")
    if len(pkls) > 1:
        raise CheckpointError(f"a zip archive with {len(pkls)} data.pkl entries ({', '.join(pkls[:3])}): "
                              "which one is meant is ambiguous")
    return pkls[0][: -len("data.pkl")]


def read(source: Source):
    """A torch zip checkpoint's content, each tensor a `Stored` (read when used)."""

    archive = Archive(source)
    prefix = _prefix(archive)
    script = any(n.startswith(f"{prefix}code/") for n in archive.entries)
    order = f"{prefix}byteorder"
    big_endian = order in archive.entries and archive.read(order, limit=16).strip() == b"big"
    archive.stored(f"{prefix}data.pkl")
    data = archive.read(f"{prefix}data.pkl")  # CRC-32 checked before it is unpickled
    notes: list[str] = []
    f = io.BytesIO(data)
    unpickling = TorchUnpickler(f, archive, prefix, script, big_endian)
    content = unpickler.load(unpickling, f, len(data))
    if isinstance(content, ScriptObject):
        content = script_state(content, Declarations(archive, prefix), notes)
        script = True
    if any(s.bf16 for s in unpickling.storages.values()):
        notes.append("bfloat16 storages are widened exactly to float32 when read")
    metadata = {}
    if f"{prefix}{RECORD_ENTRY}" in archive.entries:  # parity's record, bounded as every record is
        data = archive.read(f"{prefix}{RECORD_ENTRY}", limit=bounded_json.RECORD.max_bytes)
        try:
            metadata["parity.extras"] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"entry {prefix}{RECORD_ENTRY} (parity's record) is not UTF-8 text") from None
    return RawCheckpoint("torchscript" if script else "torch", content, metadata=metadata, notes=notes,
                         entries=[(e.name, e.start, e.length, e.crc) for e in archive.entries.values() if not e.deflated])


# ---------------------------------------------------------------- writing, without torch
_TORCH_STORAGES = {np.dtype(v): k for k, v in STORAGES.items() if v != "bfloat16"}
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


def tensor_bytes(a: np.ndarray) -> memoryview:
    """A C-ordered array's memory as flat bytes, without a copy."""
    return memoryview(a.reshape(-1)).cast("B")


def spec(tensors: Mapping[str, np.ndarray], key: str) -> tuple[np.dtype, tuple]:
    """dtype and shape of a tensor to write, without making it where the mapping can say (a plan)."""
    if hasattr(tensors, "spec"):
        return tensors.spec(key)
    a = tensors[key]
    return a.dtype, tuple(a.shape)


def made(tensors: Mapping[str, np.ndarray], key: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """tensors[key] in C order, refused if it is not what its header (written before it) says."""
    value = contiguous(tensors[key])
    if value.dtype != dtype or tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{key}: made as {value.dtype} {list(value.shape)}, planned as {dtype} {list(shape)}")
    return value


def write(f, tensors: Mapping[str, np.ndarray], record: Callable[[], str | None] | None = None) -> None:
    """A plain torch state dict (as `torch.save` of an OrderedDict writes it), written without torch, one
    tensor at a time; `build_model` and `torch.load(weights_only=True)` read it. `record` (called once the
    tensors are written) gives parity's record, stored as one more entry, RECORD_ENTRY: torch reads the
    entries it knows by name and never lists the others, so the file loads in torch unchanged."""
    specs = [(k, *spec(tensors, k)) for k in tensors]
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        _entry(archive, f, "archive/data.pkl", torch_pickle(specs))
        _entry(archive, f, "archive/.format_version", b"1")
        _entry(archive, f, "archive/.storage_alignment", str(ALIGNMENT).encode())
        _entry(archive, f, "archive/byteorder", sys.byteorder.encode())
        for i, (key, dtype, shape) in enumerate(specs):
            _entry(archive, f, f"archive/data/{i}", tensor_bytes(made(tensors, key, dtype, shape)))
        text = record() if record is not None else None
        if text is not None:
            _entry(archive, f, f"archive/{RECORD_ENTRY}", text.encode("utf-8"))
        _entry(archive, f, "archive/version", b"3\n")
