"""A zip archive read as torch writes one, each entry checked against the directory, the others and the
file's size; and a TorchScript object as plain data. Shared by the torch.save and TorchScript readers."""
from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass

from ...errors import CheckpointError
from .source import Source

_LOCAL_HEADER = 30


@dataclass(frozen=True)
class Entry:
    name: str
    start: int  # offset of its (maybe compressed) bytes in the file
    length: int  # bytes in the file
    size: int  # bytes once inflated
    crc: int
    deflated: bool


class Archive:
    """A zip archive's entries, checked against each other and against the file's size."""

    def __init__(self, source: Source):
        self.source = source
        try:
            with zipfile.ZipFile(source.window()) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
                OverflowError, struct.error, UnicodeDecodeError) as e:
            raise CheckpointError(f"a zip archive that is truncated or corrupt ({_first_line(e)})") from None
        twice = sorted(n for n, c in Counter(i.filename for i in infos).items() if c > 1)
        if twice:
            raise CheckpointError(f"the zip archive holds {Counter(i.filename for i in infos)[twice[0]]} entries "
                                  f"named {twice[0]!r}: which one is meant is ambiguous (torch reads the first, "
                                  "zipfile the last), so parity reads none")
        self.entries: dict[str, Entry] = {}
        spans = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise CheckpointError(f"entry {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"entry {info.filename!r} uses zip compression method {info.compress_type}")
            header = source.pread(info.header_offset, _LOCAL_HEADER) if 0 <= info.header_offset <= \
                source.size - _LOCAL_HEADER else b""
            if header[:4] != b"PK\x03\x04":
                raise CheckpointError(f"entry {info.filename!r} has no local header where the directory points: "
                                      "truncated or corrupt")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
            if start + info.compress_size > source.size:
                raise CheckpointError(f"entry {info.filename!r} reaches past the end of the file: truncated")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CheckpointError(f"stored entry {info.filename!r} has two different sizes: corrupt")
            if source.pread(info.header_offset + _LOCAL_HEADER, name_length) != _encoded(info):
                raise CheckpointError(f"entry {info.filename!r} is named differently in its local header: corrupt")
            self.entries[info.filename] = Entry(info.filename, start, info.compress_size, info.file_size, info.CRC,
                                                info.compress_type == zipfile.ZIP_DEFLATED)
            spans.append((info.header_offset, start + info.compress_size, info.filename))
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise CheckpointError(f"entries {a!r} and {b!r} overlap in the file: one set of bytes read as "
                                      "two, which no zip writer makes")
        self.inflated = 0  # bytes inflated so far: never more than the file's own size

    def read(self, name: str, limit: int | None = None) -> bytes:
        """An entry's bytes, CRC-32 checked; an inflated entry counts against the file's size."""
        entry = self.entries[name]
        if limit is not None and entry.size > limit:
            raise CheckpointError(f"entry {name!r} holds {entry.size} bytes, more than the {limit} it may")
        if not entry.deflated:
            data = self.source.pread(entry.start, entry.length)
        else:
            if self.inflated + entry.size > self.source.size:
                raise CheckpointError(f"entry {name!r} would inflate the archive beyond its own size "
                                      f"({self.source.size} bytes): a zip bomb, or not a torch file")
            inflater = zlib.decompressobj(-15)
            try:
                data = inflater.decompress(self.source.pread(entry.start, entry.length), entry.size)
            except zlib.error as e:
                raise CheckpointError(f"entry {name!r} does not inflate ({e})") from None
            if len(data) != entry.size or inflater.unconsumed_tail:
                raise CheckpointError(f"entry {name!r} inflates to another size than its directory says: corrupt")
            self.inflated += entry.size
        if zlib.crc32(data) != entry.crc:
            raise CheckpointError(f"entry {name!r} fails its CRC-32 check: corrupt")
        return data

    def stored(self, name: str) -> Entry:
        entry = self.entries[name]
        if entry.deflated:
            raise CheckpointError(f"entry {name!r} is compressed, and torch writes tensors uncompressed: "
                                  "re-save the checkpoint with torch.save")
        return entry


def _encoded(info: zipfile.ZipInfo) -> bytes:
    return info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0][:120] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ScriptObject:
    """A TorchScript object as plain data: its class name and its attribute dict."""

    qualname = ""
    state = None

    def __setstate__(self, state):
        self.state = state
