"""safetensors: read and written without the library, with the library's own rules.

A little-endian u64 header length, a JSON header (each tensor's dtype, shape and [begin, end) in the
data that follows, plus `__metadata__` strings), then the data. As the library does, parity requires
the tensors to tile the data exactly, in order, with no gap, overlap or trailing byte: so every
tensor's bytes lie in the file once, and 128 tensors cannot claim the same 8 MiB.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Mapping

import numpy as np

from ...errors import CheckpointError
from . import bounded_json
from .raw import RawCheckpoint
from .source import Source, Stored
from .torch_zip import made, spec, tensor_bytes

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
          "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
HEADER_LIMIT = 100_000_000  # the library's own limit on the header


def _header(source: Source) -> tuple[int, dict]:
    if source.size < 8:
        raise CheckpointError("safetensors file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", source.pread(0, 8))
    if n > min(HEADER_LIMIT, source.size - 8):
        raise CheckpointError(f"safetensors header of {n} bytes does not fit the file: truncated or corrupt")
    return 8 + n, bounded_json.loads(source.pread(8, n), bounded_json.SAFETENSORS_HEADER, source.name)


def _ints(value, what: str, name: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"tensor {name!r} has a {what} that is not a list of non-negative integers")
    return value


def read(source: Source):
    """The file's tensors, each a `Stored` (read when used), and its metadata."""

    start, header = _header(source)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("safetensors __metadata__ is not a map of strings")
    content, spans, notes = {}, [], []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise CheckpointError(f"tensor {name!r} is described by a {type(info).__name__}, not an object")
        kind = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
        if kind is None:
            raise CheckpointError(f"tensor {name!r} has dtype {str(info.get('dtype'))[:20]!r}, which parity does not read")
        shape = _ints(info.get("shape"), "shape", name)
        offsets = _ints(info.get("data_offsets"), "data_offsets", name)
        if len(offsets) != 2 or len(shape) > 64:
            raise CheckpointError(f"tensor {name!r} has malformed data_offsets or shape")
        begin, end = offsets
        dtype = np.dtype("<u2" if kind == "bfloat16" else kind).newbyteorder("<")
        if end < begin or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"tensor {name!r}: {end - begin} bytes for shape {shape[:8]} of {kind}: corrupt")
        spans.append((begin, end, name))
        content[name] = Stored(source, name, start + begin, end - begin, None, dtype, tuple(shape),
                               bf16=kind == "bfloat16")
        if kind == "bfloat16":
            notes.append(f"bfloat16 tensor {name} widened to float32 (exact)")
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(f"tensor {name!r} starts at {begin} of the data where {position} was expected: "
                                  "tensors overlap or leave a gap (truncated or corrupt)")
        position = end
    if start + position != source.size:
        raise CheckpointError(f"the tensors take {position} bytes of data but the file holds "
                              f"{source.size - start}: truncated or corrupt")
    return RawCheckpoint("safetensors", content, metadata=dict(metadata), notes=notes)


_NAMES = {np.dtype(v): k for k, v in DTYPES.items() if v != "bfloat16"}


def order(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """The order `write` stores (and asks for) the tensors in: widest dtype first, so every one is aligned."""
    specs = {k: spec(tensors, k) for k in tensors}
    return sorted(specs, key=lambda k: (-specs[k][0].itemsize, k))


def write(f, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    """safetensors as the library writes it: a JSON header (padded to 8 bytes), then each tensor's bytes,
    widest dtype first so that every tensor is aligned; written one tensor at a time."""

    specs = {k: spec(tensors, k) for k in tensors}
    keys = order(tensors)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in keys:
        dtype, shape = specs[key]
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for key in keys:
        f.write(tensor_bytes(made(tensors, key, *specs[key])))
