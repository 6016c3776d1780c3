"""Checkpoint formats: bytes in, named numpy tensors out, and back; nothing in a file is ever run.

Each format is one module with a reader whose only input is a `Source` (bytes of a known size, read at
offsets) and, where parity writes it, a writer into a file object: `torch_zip` (torch.save and, with
`torchscript`, TorchScript archives), `pdparams` (Paddle's pickle), `safetensors`. `unpickler` holds the
restricted unpickler and its pass over the opcodes, `source` the bounded reads, `atomic` the one way
parity writes a file. The format is told by content, never by file extension.
"""
from __future__ import annotations

import pickle
import struct

from ...errors import CheckpointError
from .raw import FORMAT_NAMES, RawCheckpoint
from .source import BytesSource, FileSource, Source, Stored, contiguous, materialize, open_source

def sniff(source: Source) -> str:
    """'zip', 'pickle' or 'safetensors', from the first bytes; CheckpointError for anything else."""
    if source.size == 0:
        raise CheckpointError("empty file (0 bytes)")
    head = source.pread(0, min(16, source.size))
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= source.size - 8:
        return "safetensors"
    raise CheckpointError(f"not a checkpoint (neither a zip archive, a pickle nor safetensors; "
                          f"it starts with {head[:8]!r})")


# what parsing raises on malformed input (the unpickler adds its own: see unpickler.load); anything else
# escaping a reader is a bug in parity, and the fuzzer counts it as one
MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, struct.error, UnicodeDecodeError, OverflowError,
             MemoryError, RecursionError)


def read(source: Source, unread: bool = False) -> RawCheckpoint:
    """Read any supported checkpoint from `source` into numpy arrays and `Stored` tensors, without
    running code from it; CheckpointError, naming the source, for anything else.

    The tensors it describes may take no more bytes than the source holds (each counted where it
    appears), so memory follows the file's size, never what the file claims. `unread` (pickles only): each
    array is left where it lies (`pdparams.Placed`), never read.
    """
    from . import pdparams, safetensors, torch_zip

    kind = "checkpoint"
    try:
        kind = sniff(source)
        if kind == "zip":
            raw = torch_zip.read(source)
        elif kind == "pickle":
            raw = pdparams.read(source, unread)
        else:
            raw = safetensors.read(source)
        if not unread:
            raw.stored_bytes = pdparams.check_plain(raw.content)
            if raw.stored_bytes > source.size:
                raise CheckpointError(f"its tensors claim {raw.stored_bytes} bytes but the file holds "
                                      f"{source.size}: tensors share bytes (aliased), which parity refuses")
        return raw
    except CheckpointError as e:
        raise e.at(source.name) from None
    except MALFORMED as e:
        detail = str(e).splitlines()[0][:120] if str(e) else "no detail"
        raise CheckpointError(f"truncated or corrupt {FORMAT_NAMES.get(kind, kind)} file "
                              f"({type(e).__name__}: {detail})", path=source.name) from None


__all__ = ["FORMAT_NAMES", "BytesSource", "FileSource", "RawCheckpoint", "Source", "Stored", "contiguous",
           "materialize", "open_source", "read", "sniff"]
