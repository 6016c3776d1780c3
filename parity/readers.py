"""Checkpoint readers, chosen by content (never by file extension); none of them runs code from the file.

A torch zip archive (`torch.save` since torch 1.6, or a TorchScript archive such as the official CLIP
releases), a Paddle `.pdparams` pickle (numpy arrays in plain containers), or safetensors. Pickles go
through restricted unpicklers that admit arrays, scalars and plain containers and refuse every other
global by name, so a payload (`__reduce__` to `os.system`) is never even looked up. A TorchScript
archive's code is never compiled or run: the tensors come from its `data.pkl`, and which attributes
are parameters or buffers from the class declarations in its code files, parsed as text by `ast`.
Tensors come back as numpy arrays, so reading needs neither torch nor Paddle.
"""
from __future__ import annotations

import ast
import json
import math
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import CheckpointError, UnsafeCheckpointError

FORMAT_NAMES = {"torchscript": "TorchScript archive", "torch": "torch pickle in a zip (torch.save)",
                "pdparams": "Paddle pickle (.pdparams)", "safetensors": "safetensors"}
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch.save's pre-1.6 format


def _nothing() -> None:
    return None


@dataclass
class RawCheckpoint:
    format: str  # a key of FORMAT_NAMES
    content: object  # what the file holds: (nested) containers of numpy arrays
    metadata: dict = field(default_factory=dict)  # safetensors header metadata
    notes: list = field(default_factory=list)
    release: Callable[[], None] = _nothing  # drops the mapped pages read so far (memory-mapped reading)
    storages: list = field(default_factory=list)  # (name, offset, length, CRC-32) of each mapped zip entry


def sniff(path: Path) -> str:
    """'zip', 'pickle' or 'safetensors', from the first bytes; CheckpointError for anything else."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    raise CheckpointError(f"{path}: not a checkpoint (neither a zip archive, a pickle nor safetensors; "
                          f"it starts with {head[:8]!r})")


def read(path: Path, mapped: bool = False, visit: Callable | None = None) -> RawCheckpoint:
    """Read any supported file into numpy arrays, without running code from it.

    `mapped`: tensors of a zip archive (stored entries) or safetensors file are read-only views of the
    file, memory-mapped, so nothing is read before it is used; the caller checks the CRC-32 of the
    zip entries (`storages`) and calls `release` to drop what it has read. `visit` (pickles only) is
    given each array as it is read and returns what stands for it: a check that holds one at a time.
    """
    kind = sniff(path)
    try:
        if kind == "zip":
            return _read_torch_zip(path, mapped)
        if kind == "pickle":
            return _read_pickle(path, visit)
        return _read_safetensors(path, mapped)
    except CheckpointError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError,
            IndexError, AttributeError, struct.error, UnicodeDecodeError, MemoryError, RecursionError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt {kind} file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})") from None


# ---------------------------------------------------------------- restricted unpickling
class _Restricted(pickle.Unpickler):
    allowed: dict = {}

    def find_class(self, module, name):
        target = self.allowed.get((module, name)) or self.dynamic_class(module, name)
        if target is None:
            raise UnsafeCheckpointError(
                f"refused to load global {module}.{name}: a checkpoint may hold only tensors, numbers and "
                "plain containers, so parity stopped reading (nothing in the file was run)")
        return target

    def dynamic_class(self, module, name):
        return None


def _latin1(text, encoding="latin1"):  # protocol-2 pickles carry bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("refused _codecs.encode with anything but a latin1 string")
    return text.encode("latin1")


class _NDArrayType:  # stands in for numpy.ndarray: not callable, so a pickle cannot build arrays its own way
    pass


_NDARRAY = _NDArrayType()


def _np_reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError(f"refused to rebuild an array of type {type(subtype).__name__}")
    return np.ndarray((0,), np.uint8)  # ndarray.__setstate__ (BUILD) then sets shape, dtype and bytes


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise UnsafeCheckpointError("refused a numpy dtype not given by name")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise UnsafeCheckpointError("refused an object array (it would hold arbitrary Python objects)")
    return dtype


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafeCheckpointError("refused a numpy scalar that is not plain bytes of a plain dtype")
    return np.frombuffer(data, dtype=dtype)[0]


def _np_frombuffer(buffer, dtype, shape, order="C"):  # numpy's protocol-5 form of an array
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) \
            or dtype.hasobject or order not in ("C", "F"):
        raise UnsafeCheckpointError("refused a numpy buffer that is not plain bytes of a plain dtype")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _tuple(items=()):  # paddle.save writes a tensor inside nested containers as tuple((name, array))
    if not isinstance(items, (tuple, list)):
        raise UnsafeCheckpointError("refused builtins.tuple of anything but a tuple or list")
    return tuple(items)


class _NumpyUnpickler(_Restricted):
    allowed = {("collections", "OrderedDict"): OrderedDict, ("_codecs", "encode"): _latin1,
               ("builtins", "tuple"): _tuple,
               ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _np_dtype,
               **{(f"numpy.{core}.multiarray", name): f
                  for core in ("core", "_core")  # numpy 1 and numpy 2 spell the module differently
                  for name, f in (("_reconstruct", _np_reconstruct), ("scalar", _np_scalar))},
               **{(f"numpy.{core}.numeric", "_frombuffer"): _np_frombuffer for core in ("core", "_core")}}


def _check_plain(obj, depth=0):
    """Refuse object arrays and anything but containers, arrays, numbers and strings."""
    if depth > 50:
        raise CheckpointError("containers nested more than 50 deep")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafeCheckpointError("refused an object array (it would hold arbitrary Python objects)")
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        raise CheckpointError(f"unexpected {type(obj).__name__} object in the pickle")


class _VisitingUnpickler(_NumpyUnpickler):
    def __init__(self, file, visit: Callable):
        super().__init__(file)
        self.visit = visit

    def find_class(self, module, name):
        target = super().find_class(module, name)
        if target is _np_frombuffer:
            return lambda *args: self.visit(_np_frombuffer(*args))
        if target is _np_reconstruct:
            raise CheckpointError("an array in the pickle's protocol-2 form where parity wrote protocol 5")
        return target


def _read_pickle(path: Path, visit: Callable | None = None) -> RawCheckpoint:
    with open(path, "rb") as f:
        content = (_VisitingUnpickler(f, visit) if visit else _NumpyUnpickler(f)).load()
    if isinstance(content, int) and content == _LEGACY_TORCH_MAGIC:
        raise CheckpointError("torch's legacy pre-1.6 (non-zip) format is not read; re-save it with a "
                              "current torch (torch.save(torch.load(f, weights_only=True), new_file))")
    if visit is None:  # with a visitor, the caller checks what stands for each array
        _check_plain(content)
    return RawCheckpoint("pdparams", content)


# ---------------------------------------------------------------- torch zip archives
_STORAGES = {"FloatStorage": "float32", "HalfStorage": "float16", "DoubleStorage": "float64",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


def _tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2), checked against the storage's bounds."""
    if not isinstance(storage, np.ndarray):
        raise CheckpointError("a tensor without a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise CheckpointError(f"a tensor with impossible size {list(size)} / stride {list(stride)}")
    n = math.prod(size)
    if n == 0:
        return np.empty(size, dtype=storage.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(f"a tensor of shape {list(size)} reaches past the end of its storage "
                              f"({storage.size} elements): truncated or corrupt")
    contiguous = all(st == math.prod(size[i + 1:]) for i, (s, st) in enumerate(zip(size, stride)) if s > 1)
    if contiguous:
        return storage[offset:offset + n].reshape(size)  # a view: no copy
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[st * storage.itemsize for st in stride])
    return np.array(view)  # a contiguous copy of a strided view


def _parameter(data, *_ignored):  # nn.Parameter -> its data
    return data


def _same(value, *_ignored):
    return value


class _ScriptObject:
    """A TorchScript object as plain data: its class name and its attribute dict."""

    qualname = ""
    state = None

    def __setstate__(self, state):
        self.state = state


class _TorchUnpickler(_Restricted):
    allowed = {("collections", "OrderedDict"): OrderedDict, ("_codecs", "encode"): _latin1,
               ("torch._utils", "_rebuild_tensor_v2"): _tensor, ("torch._utils", "_rebuild_tensor"): _tensor,
               ("torch._utils", "_rebuild_parameter"): _parameter,
               ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
               ("torch", "Size"): tuple,
               **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
               **{("torch.jit._pickle", name): _same for name in
                  ("restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")}}

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, script: bool, notes: list,
                 mapping: mmap.mmap | None = None):
        super().__init__(file)
        self.archive, self.prefix, self.script, self.notes, self.mapping = archive, prefix, script, notes, mapping
        self.storages: dict[str, np.ndarray] = {}
        self.mapped: list[tuple[str, int, int, int]] = []  # (entry, offset, length, CRC-32) read as views
        self.classes: dict[str, type] = {}
        self.big_endian = f"{prefix}byteorder" in archive.namelist() and \
            archive.read(f"{prefix}byteorder").strip() == b"big"

    def dynamic_class(self, module, name):
        if not (self.script and module.startswith("__torch__")):
            return None
        qualname = f"{module}.{name}"
        if qualname not in self.classes:  # a plain placeholder class per TorchScript class
            self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
        return self.classes[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unknown persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            try:
                info = self.archive.getinfo(f"{self.prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key} is missing from the archive: truncated or corrupt") from None
            bf16 = kind.dtype == "bfloat16"
            dtype = np.dtype("uint16" if bf16 else kind.dtype)
            size = int(numel) * dtype.itemsize
            if info.file_size < size:
                raise CheckpointError(f"storage {key} holds {info.file_size} bytes, {size} expected: "
                                      "truncated or corrupt")
            if self.mapping is not None and info.compress_type == zipfile.ZIP_STORED and not self.big_endian \
                    and not bf16:
                self.storages[key] = self._view(info, dtype, int(numel))
                return self.storages[key]
            with self.archive.open(info) as f:
                raw = f.read(size)  # never more than the tensor needs (a zip bomb stays unexploded)
            if len(raw) < size:
                raise CheckpointError(f"storage {key} ends after {len(raw)} of {size} bytes: truncated or corrupt")
            if self.big_endian:
                array = np.frombuffer(raw, dtype=dtype.newbyteorder(">"), count=int(numel)).astype(dtype)
            else:
                array = np.frombuffer(bytearray(raw), dtype=dtype, count=int(numel))  # writable, no second copy
            if bf16:  # numpy has no bfloat16: widen exactly to float32 (bf16 is float32's upper half)
                array = (array.astype(np.uint32) << 16).view(np.float32)
                self.notes.append(f"bfloat16 storage {key} widened to float32 (exact)")
            self.storages[key] = array
        return self.storages[key]


    def _view(self, info: zipfile.ZipInfo, dtype: np.dtype, numel: int) -> np.ndarray:
        # a stored entry's bytes follow its local header: 30 bytes, the name, the extra field
        header = self.mapping[info.header_offset:info.header_offset + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"entry {info.filename} has no local header: truncated or corrupt")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > len(self.mapping):
            raise CheckpointError(f"entry {info.filename} reaches past the end of the file: truncated")
        self.mapped.append((info.filename, start, info.file_size, info.CRC))
        return np.frombuffer(self.mapping, dtype=dtype, count=numel, offset=start)


def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _releaser(mapping: mmap.mmap) -> Callable[[], None]:
    def release():  # the pages stay in the page cache; touching them again maps them again
        mapping.madvise(mmap.MADV_DONTNEED)
    return release if hasattr(mmap, "MADV_DONTNEED") else _nothing


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError("a zip archive without a data.pkl: not a torch checkpoint")
    return pkls[0][: -len("data.pkl")]


def _read_torch_zip(path: Path, mapped: bool = False) -> RawCheckpoint:
    notes: list[str] = []
    mapping = _map(path) if mapped else None
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive)
        script = any(n.startswith(f"{prefix}code/") for n in archive.namelist())
        with archive.open(f"{prefix}data.pkl") as f:
            unpickler = _TorchUnpickler(f, archive, prefix, script, notes, mapping)
            content = unpickler.load()
        if isinstance(content, _ScriptObject):
            content = _script_state(content, _Declarations(archive, prefix), notes)
            script = True
    _check_plain(content)
    raw = RawCheckpoint("torchscript" if script else "torch", content, notes=notes, storages=unpickler.mapped)
    if mapping is not None:
        raw.release = _releaser(mapping)
    return raw


class _Declarations:
    """`__parameters__` / `__buffers__` of each TorchScript class, read from its code file with `ast`."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        self.archive, self.prefix, self.files = archive, prefix, {}

    def __call__(self, qualname: str) -> tuple[list, list] | None:
        module, _, name = qualname.rpartition(".")
        path = f"{self.prefix}code/{module.replace('.', '/')}.py"
        if path not in self.files:
            try:
                self.files[path] = ast.parse(self.archive.read(path).decode("utf-8"))  # parsed, never run
            except (KeyError, SyntaxError, UnicodeDecodeError, ValueError):
                self.files[path] = None
        tree = self.files[path]
        for node in (tree.body if tree else []):
            if isinstance(node, ast.ClassDef) and node.name == name:
                lists = {t.id: [e.value for e in stmt.value.elts if isinstance(e, ast.Constant)]
                         for stmt in node.body if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.List)
                         for t in stmt.targets if isinstance(t, ast.Name)}
                if "__parameters__" in lists or "__buffers__" in lists:
                    return lists.get("__parameters__", []), lists.get("__buffers__", [])
        return None


def _script_state(root: _ScriptObject, declarations: _Declarations, notes: list) -> dict:
    """A TorchScript module tree -> its state dict (parameters and buffers by dotted name)."""
    out: dict[str, np.ndarray] = {}
    undeclared, skipped, seen = [], [], set()

    def walk(obj: _ScriptObject, prefix: str):
        if id(obj) in seen:
            raise CheckpointError("a TorchScript module that contains itself")
        seen.add(id(obj))
        attrs = obj.state if isinstance(obj.state, dict) else {}
        declared = declarations(obj.qualname)
        if declared is None:
            undeclared.append(obj.qualname)
            names = [k for k, v in attrs.items() if isinstance(v, np.ndarray)]
        else:  # parameters first, then buffers, as torch's state_dict() orders them
            names = [n for n in declared[0] + declared[1] if isinstance(attrs.get(n), np.ndarray)]
        out.update({prefix + n: attrs[n] for n in names})
        for key, value in attrs.items():
            if isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, np.ndarray) and key not in names:
                skipped.append(prefix + key)

    walk(root, "")
    if undeclared:
        notes.append(f"{len(undeclared)} TorchScript classes without parameter/buffer declarations: "
                     "all their tensor attributes were taken as state")
    if skipped:
        notes.append(f"{len(skipped)} tensor attributes that are neither parameters nor buffers left out "
                     f"(as torch's state_dict() does): {', '.join(skipped[:5])}")
    return out


# ---------------------------------------------------------------- safetensors
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _read_safetensors(path: Path, mapped: bool = False) -> RawCheckpoint:
    size, notes = path.stat().st_size, []
    mapping = _map(path) if mapped else None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise CheckpointError("safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        start, content = 8 + n, {}
        for name, info in header.items():
            kind = _ST_DTYPES.get(info.get("dtype"))
            if kind is None:
                raise CheckpointError(f"tensor {name!r} has dtype {info.get('dtype')!r}, which parity does not read")
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            dtype = np.dtype("uint16" if kind == "bfloat16" else kind)
            if end - begin != math.prod(shape) * dtype.itemsize or begin < 0 or start + end > size:
                raise CheckpointError(f"tensor {name!r} lies outside the file or has the wrong length: "
                                      "truncated or corrupt")
            if mapping is not None:
                array = np.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=start + begin).reshape(shape)
            else:
                f.seek(start + begin)
                array = np.frombuffer(bytearray(f.read(end - begin)), dtype=dtype).reshape(shape)
            if kind == "bfloat16":  # widened exactly to float32, as for torch files
                array = (array.astype(np.uint32) << 16).view(np.float32)
                notes.append(f"bfloat16 tensor {name} widened to float32 (exact)")
            content[name] = array
    raw = RawCheckpoint("safetensors", content, metadata=dict(metadata), notes=notes)
    if mapping is not None:
        raw.release = _releaser(mapping)
    return raw
