"""Bounded byte sources: what every reader takes, and how a tensor's bytes are read when needed.

A reader sees a file only through a `Source`: its size, fixed when it was opened, and exact reads at an
offset. Nothing is memory-mapped (a mapped file that another process truncates kills the reader with
SIGBUS), every read is bounded by that size, and a read that comes back short, because the file shrank
under parity, is an error that says so. A file is opened once and read through that one descriptor:
hashing, reading and checking all see the same file, and `check_unchanged` tells when it changed.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import stat
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import xxhash

from ...errors import CheckpointError


class Source:
    """Bytes of a known size, read at offsets; subclasses give `_readinto`."""

    name: str = "<bytes>"
    size: int = 0

    def __init__(self):
        self.verified: set[str] = set()  # zip entries whose CRC-32 held on their first read
        self._scratch: list[np.ndarray] = []

    def _readinto(self, offset: int, view: memoryview) -> int:
        raise NotImplementedError

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill `view` (flat bytes) from `offset`, exactly, or CheckpointError."""
        n = len(view)
        if offset < 0 or offset + n > self.size:
            raise CheckpointError(f"a read of {n} bytes at {offset} reaches past the end of the "
                                  f"file ({self.size} bytes): truncated or corrupt", path=self.name)
        done = 0
        while done < n:
            got = self._readinto(offset + done, view[done:])
            if got <= 0:
                raise CheckpointError(f"the file ends after {offset + done} of its {self.size} "
                                      "bytes: it was truncated while parity read it", path=self.name)
            done += got

    def pread(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.readinto(offset, memoryview(buffer))
        return bytes(buffer)

    def window(self, offset: int = 0, length: int | None = None) -> io.BufferedReader:
        """A read-only, seekable file object over [offset, offset + length): for zipfile and pickle."""
        length = self.size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CheckpointError(f"a part of {length} bytes at {offset} lies outside the file "
                                  f"({self.size} bytes): truncated or corrupt", path=self.name)
        return io.BufferedReader(_Window(self, offset, length), buffer_size=1 << 16)

    def buffer(self, nbytes: int) -> np.ndarray:
        """Flat uint8 memory for one read. One of the last two buffers is reused when nothing made from it
        is still alive (an array made from it holds a reference to it), so a conversion that drops each
        tensor before the next but one (one written while the next is read) reuses two buffers (fresh pages
        cost more than the copy into them), and nothing that is still in use is ever overwritten. One
        thread reads at a time."""
        for scratch in self._scratch:
            # referenced only by the list, `scratch` and getrefcount's argument
            if scratch.size >= nbytes and sys.getrefcount(scratch) <= 3:
                return scratch[:nbytes]
        self._scratch = [*self._scratch[-1:], np.empty(nbytes, np.uint8)]
        return self._scratch[-1]

    def check_unchanged(self) -> None:
        """CheckpointError if the file was changed since it was opened (size, inode, modification time)."""

    def close(self) -> None:
        pass


class BytesSource(Source):
    """A source over bytes in memory (what the fuzzer feeds the readers)."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        super().__init__()
        self.data, self.name, self.size = memoryview(data).cast("B"), name, len(data)

    def _readinto(self, offset: int, view: memoryview) -> int:
        n = min(len(view), self.size - offset)
        view[:n] = self.data[offset:offset + n]
        return n


class FileSource(Source):
    """A regular file, opened once; its size is fixed at opening and bounds every read."""

    def __init__(self, path, fd: int | None = None):
        # first, before anything can raise: `close` (and so `__del__`, which runs on an object whose
        # __init__ failed too) finds a descriptor that is not open yet, and does nothing
        self.fd, self.own = -1, False
        super().__init__()
        self.name = str(path)
        self.own = fd is None
        if fd is None:
            try:  # O_NONBLOCK: opening a FIFO must not hang; a non-regular file is refused next
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as e:
                raise CheckpointError(f"cannot be opened ({e.strerror})", path=path) from None
        self.fd = fd
        self.stat = os.fstat(fd)
        if not stat.S_ISREG(self.stat.st_mode):
            self.close()
            raise CheckpointError("not a regular file", path=path)
        self.size = self.stat.st_size

    def _readinto(self, offset: int, view: memoryview) -> int:
        return os.preadv(self.fd, [view], offset)

    def check_unchanged(self) -> None:
        now = os.fstat(self.fd)
        if (now.st_size, now.st_ino, now.st_mtime_ns) != (self.size, self.stat.st_ino, self.stat.st_mtime_ns):
            raise CheckpointError(f"the file changed while parity read it (size {self.size} -> "
                                  f"{now.st_size} bytes); nothing was written from it", path=self.name)

    def close(self) -> None:
        if self.own and self.fd >= 0:
            fd, self.fd = self.fd, -1  # marked closed first: a second close never closes a reused number
            os.close(fd)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def user_stat(path: Path) -> os.stat_result:
    """os.stat of a path given by a user: CheckpointError, naming it, where there is nothing to read."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise CheckpointError("no such file", path=path) from None
    except OSError as e:  # a name too long, a loop of links, a folder without search permission
        raise CheckpointError(f"cannot be read ({e.strerror})", path=path) from None


# what this process reads (inputs by device and inode, and by their real paths): the clean-up of stale
# temporary entries never removes one of them, nor a folder that holds one, whatever its name
_INPUTS: set[tuple[int, int]] = set()
_INPUT_PATHS: set[str] = set()


def mark_input(path, info: os.stat_result) -> None:
    """Record `path` (a file or folder this process reads) as an input, which nothing may remove."""
    _INPUTS.add((info.st_dev, info.st_ino))
    _INPUT_PATHS.add(os.path.realpath(path))


def holds_input(path, info: os.stat_result) -> bool:
    """Whether `path` is an input, or a folder that holds one (see `mark_input`)."""
    if (info.st_dev, info.st_ino) in _INPUTS:
        return True
    real = os.path.realpath(path)
    return stat.S_ISDIR(info.st_mode) and any(p.startswith(real + os.sep) for p in _INPUT_PATHS)


def open_source(path) -> FileSource:
    """A FileSource for a path given by a user: CheckpointError, naming it, for anything but a regular file."""
    path = Path(path)
    if not stat.S_ISREG(user_stat(path).st_mode):
        raise CheckpointError("not a file", path=path)
    source = FileSource(path)
    mark_input(path, source.stat)
    return source


class _Window(io.RawIOBase):
    def __init__(self, source: Source, offset: int, length: int):
        self.source, self.start, self.length, self.position = source, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self.length - self.position))
        if n:
            self.source.readinto(self.start + self.position, view[:n])
            self.position += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position


class Stored:
    """A tensor whose bytes lie in a source, read (and checked) each time it is asked for.

    `entry`, `crc`, `entry_offset`, `entry_length`: the zip entry that holds it, whose CRC-32 is checked
    on its first read. `start` and `strides` (in elements) place the tensor in the entry's elements;
    `stored` is the dtype as stored (maybe big-endian; uint16 for bfloat16, which `bf16` widens exactly
    to float32 when read).
    """

    __slots__ = ("source", "entry", "crc", "entry_offset", "entry_length", "stored", "bf16", "start", "shape",
                 "strides", "dtype")

    def __init__(self, source: Source, entry: str, entry_offset: int, entry_length: int, crc: int | None,
                 stored: np.dtype, shape: tuple, start: int = 0, strides: tuple | None = None, bf16: bool = False):
        self.source, self.entry, self.crc = source, entry, crc
        self.entry_offset, self.entry_length = entry_offset, entry_length
        self.stored, self.bf16, self.shape, self.start, self.strides = stored, bf16, tuple(shape), start, strides
        self.dtype = np.dtype(np.float32) if bf16 else stored.newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The tensor as a numpy array (in the source's buffer when nothing else uses it: see `buffer`)."""
        raw = self.source.buffer(self.entry_length)
        self.source.readinto(self.entry_offset, memoryview(raw))
        if self.crc is not None and self.entry not in self.source.verified:
            if zlib.crc32(raw) != self.crc:
                raise CheckpointError(f"entry {self.entry} fails its CRC-32 check: corrupt", path=self.source.name)
            self.source.verified.add(self.entry)
        elements = raw.view(self.stored)
        if self.strides is None:
            array = elements[self.start:self.start + self.size].reshape(self.shape)
        else:
            array = np.lib.stride_tricks.as_strided(elements[self.start:], shape=self.shape,
                                                    strides=[s * self.stored.itemsize for s in self.strides])
            array = np.array(array)  # a dense copy of a strided view (its elements lie in the entry once)
        if self.bf16:  # numpy has no bfloat16: widened exactly to float32 (its upper half)
            return (array.astype(np.uint32) << 16).view(np.float32)
        if not self.stored.isnative:
            return array.astype(self.dtype)
        return array

    def __array__(self, dtype=None, copy=None):
        array = self.read()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"Stored({self.entry!r}, {self.dtype}, {list(self.shape)})"


def materialize(value):
    """A Stored read into a fresh array; anything else as it is."""
    return value.read() if isinstance(value, Stored) else value


def sha256(source: Source | str | Path, entries: list[tuple[str, int, int, int]] = (),
           stop: threading.Event | None = None) -> str:
    """The SHA-256 of an open source (or of a file, by path); on the same pass, the CRC-32 of each
    (name, offset, length, crc) zip entry: CheckpointError if one fails. `stop` set: give up at the next
    block (the caller no longer needs the result)."""
    if not isinstance(source, Source):
        with open_source(source) as opened:
            return sha256(opened, entries, stop)
    digest = hashlib.sha256()
    pending = sorted(entries, key=lambda e: e[1])
    crc, position = 0, 0
    for view in blocks(source, 0, source.size, bytearray(1 << 22), stop):
        digest.update(view)
        n = len(view)
        end = position + n
        while pending and pending[0][1] < end:
            name, start, length, expected = pending[0]
            crc = zlib.crc32(view[max(start - position, 0):max(min(start + length - position, n), 0)], crc)
            if start + length > end:
                break
            if crc != expected:
                raise CheckpointError(f"entry {name} fails its CRC-32 check: corrupt", path=source.name)
            pending.pop(0)
            crc = 0
        position = end
    if pending:
        raise CheckpointError(f"entry {pending[0][0]} reaches past the end of the file: truncated", path=source.name)
    return digest.hexdigest()


def blocks(source: Source, offset: int, length: int, block: bytearray,
           stop: threading.Event | None = None) -> Iterator[memoryview]:
    """`length` bytes of `source` from `offset`, one `block` at a time, each read into `block` (reused: no
    fresh memory per block, and each view is valid until the next). `stop` set: CheckpointError before the
    next read (the caller no longer needs the rest)."""
    view = memoryview(block)
    for start in range(offset, offset + length, len(block)):
        if stop is not None and stop.is_set():
            raise CheckpointError("hashing stopped", path=source.name)
        part = view[:min(len(block), offset + length - start)]
        source.readinto(start, part)
        yield part


def hash_range(source: Source, offset: int, length: int, block: bytearray) -> int:
    """The XXH3-128 of `length` bytes of `source` at `offset` (what `tensors.digest` gives for an array of
    those bytes), read through `block`."""
    hasher = xxhash.xxh3_128()
    for part in blocks(source, offset, length, block):
        hasher.update(part)
    return hasher.intdigest()


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
