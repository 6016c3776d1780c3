"""The one JSON reader: every JSON document parity reads (a folder's `config.json`, `open_clip_config.json`,
a `--config` file, parity's record, a shard index, an export's `manifest.json` and `reference.json`, a
tokenizer's config, a safetensors header) comes through `read` or `loads`, bounded by what its kind can need.

JSON expands: 16 MiB of `{}` is 5 million dicts, about 470 MB of Python objects. So before anything is
parsed, the text is scanned (in C: a regex over the strings, then byte counts) and refused when it holds
more values, or nests deeper, than its `Kind` allows: a CLIP config is kilobytes and a few hundred
values, a shard index megabytes. A file is opened through the bounded `FileSource` (a FIFO or a device is
refused without blocking, and the read is bounded by the file's own size and the kind's byte cap).
The top level is always an object.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CheckpointError
from .source import open_source


@dataclass(frozen=True)
class Kind:
    """What one kind of JSON document may hold at the most: bytes, values (every object, array, string,
    number, true/false/null counts one) and nesting depth."""

    what: str  # how an error names it: "config file", "shard index", ...
    max_bytes: int
    max_values: int
    max_depth: int


KiB, MiB = 1 << 10, 1 << 20
# a library's model config, open_clip's config, a tokenizer or processor config: kilobytes, hundreds of values
CONFIG = Kind("config", 1 * MiB, 20_000, 16)
# parity's record: the config, a dtype per hub tensor (a few thousand), hub-only buffers (a few ints)
RECORD = Kind("parity record", 4 * MiB, 100_000, 16)
# a sharded checkpoint's index: one entry per tensor (bigG has about 2,000)
INDEX = Kind("shard index", 16 * MiB, 400_000, 8)
# an export's manifest: config, inputs, outputs, file hashes and the check's results
MANIFEST = Kind("export manifest", 1 * MiB, 20_000, 16)
# an export's reference outputs: per tower and input set, a batch of feature vectors (bigG: 1,280 wide)
REFERENCE = Kind("export reference", 16 * MiB, 1_000_000, 8)
# a safetensors header: a few values per tensor; the safetensors library itself refuses headers over 100 MB
SAFETENSORS_HEADER = Kind("safetensors header", 100 * MiB, 4_000_000, 4)

# a JSON string, escapes included (the scan removes strings, so that brackets and commas inside them do
# not count); a malformed document is counted generously and then refused by the parser, which stops at
# its first error, so nothing past it is ever built
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"{[", np.uint8), np.frombuffer(b"}]", np.uint8)


def _check_shape(data: bytes, kind: Kind, name) -> None:
    """CheckpointError when `data` holds more values, or nests deeper, than `kind` allows."""
    bare = _STRING.sub(b'""', data)
    opens = bare.count(b"{") + bare.count(b"[")
    # every value but the first follows a comma or opens a container: so this bounds the value count
    values = 1 + bare.count(b",") + opens
    if values > kind.max_values:
        raise CheckpointError(f"a {kind.what} of up to {values} JSON values, more than the "
                              f"{kind.max_values} it may hold", path=name)
    if opens > kind.max_depth:
        arr = np.frombuffer(bare, np.uint8)
        brackets = arr[np.isin(arr, np.concatenate([_OPEN, _CLOSE]))]  # at most `values` of them
        depth = np.cumsum(np.where(np.isin(brackets, _OPEN), 1, -1), dtype=np.int64)
        if depth.size and depth.max() > kind.max_depth:
            raise CheckpointError(f"a {kind.what} nested {int(depth.max())} deep, more than the "
                                  f"{kind.max_depth} it may be", path=name)


def loads(data: bytes | str, kind: Kind, name) -> dict:
    """A JSON object from `data` (a file's bytes, or text stored inside a checkpoint), within `kind`'s
    bounds; CheckpointError naming `name` for anything else."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"the {kind.what} is a {type(data).__name__}, not JSON text", path=name)
    if len(data) > kind.max_bytes:
        raise CheckpointError(f"a {kind.what} of {len(data)} bytes, more than the {kind.max_bytes} "
                              "it may hold", path=name)
    _check_shape(bytes(data), kind, name)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError, MemoryError) as e:  # UnicodeDecodeError is a ValueError
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(f"the {kind.what} is not JSON ({type(e).__name__}: {detail})", path=name) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"the {kind.what} is not a JSON object", path=name)
    return value


def read(path, kind: Kind) -> dict:
    """A JSON object from the file at `path`: a regular file (a FIFO or a device is refused, never waited
    on), read through one descriptor, bounded by its size and `kind`; CheckpointError naming it."""
    with open_source(Path(path)) as source:
        return read_source(source, kind)


def read_source(source, kind: Kind) -> dict:
    """A JSON object from an opened `Source` (a file opened relative to a folder's descriptor, say): its
    size checked against `kind` before a byte is read; CheckpointError naming it."""
    if source.size > kind.max_bytes:
        raise CheckpointError(f"a {kind.what} of {source.size} bytes, more than the "
                              f"{kind.max_bytes} it may hold", path=source.name)
    return loads(source.pread(0, source.size), kind, source.name)


__all__ = ["CONFIG", "INDEX", "MANIFEST", "RECORD", "REFERENCE", "SAFETENSORS_HEADER", "Kind", "loads", "read",
           "read_source"]
