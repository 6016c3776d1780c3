"""Checkpoint folders (Hugging Face and PaddleNLP `from_pretrained` folders, open_clip's hub folders): a
config file and the weights, whole or in shards named by an index, read through the same bounded readers
as single files. A hub folder may hold open_clip's files beside transformers' (the same model twice):
open_clip's are read then, and a note says which were not.

A folder is opened as an `Input` beside a single file's: each file is opened once and read through its
own descriptor, bounded by its size; `config.json`, parity's record and an index are read whole by the
one bounded JSON reader (`bounded_json`), each within what its kind can need.
The folder's digest is the SHA-256 over each file's name and SHA-256, in name order.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

from ...errors import CheckpointError, SameFileError, printable
from . import bounded_json
from .source import FileSource, mark_input, open_source, sha256, user_stat

# weight files a folder may hold, in the order their libraries prefer them
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model_state.pdparams")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
INDEXES = {f"{name}.index.json": name for name in ("model.safetensors", "pytorch_model.bin", "model_state.pdparams")}
TEXT_LIMIT = 1 << 24


def read_small(path: Path, what: str) -> bytes:
    """A small file's bytes (a vocabulary), bounded by its size and TEXT_LIMIT; CheckpointError naming it."""
    with open_source(path) as source:
        if source.size > TEXT_LIMIT:
            raise CheckpointError(f"a {what} of {source.size} bytes, more than the {TEXT_LIMIT} it may hold", path=path)
        return source.pread(0, source.size)


def weight_map(index: dict, where) -> dict[str, str]:
    """A sharded index's map of tensor names to shard files (file names in the folder, nothing else)."""
    mapping = index.get("weight_map")
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise CheckpointError("no weight_map of tensor names to shard files", path=where)
    if not mapping:
        raise CheckpointError("the index names no tensors", path=where)
    for shard in set(mapping.values()):
        if "/" in shard or "\\" in shard or "\0" in shard or shard in ("", ".", "..") or \
                len(os.fsencode(shard)) > 255:
            raise CheckpointError(f"shard {printable(shard[:80])!r} is not a file name in the folder", path=where)
    return mapping


class FileInput:
    """One checkpoint file, opened once."""

    def __init__(self, path: Path):
        self.path, self.source = Path(path), open_source(path)
        self.stat, self.config_json, self.files = self.source.stat, None, [self.source]

    def read(self):
        from . import read
        return read(self.source)

    def sha256(self, entries=(), stop: threading.Event | None = None) -> str:
        return sha256(self.source, entries, stop)

    def check_unchanged(self) -> None:
        self.source.check_unchanged()

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FolderInput:
    """A `from_pretrained` folder: config.json, and one weight file or the shards its index names."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.stat = os.stat(self.path)
        mark_input(self.path, self.stat)
        self.notes: list[str] = []
        if (self.path / OPEN_CLIP_CONFIG).is_file() and any((self.path / n).is_file() for n in OPEN_CLIP_WEIGHTS):
            self.config_name, self.weight_names, self.indexes = OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, {}
            others = [n for n in ("config.json", *WEIGHTS) if (self.path / n).is_file()]
            if others:
                self.notes.append(f"read open_clip's files; not read: {', '.join(others)}")
        elif (self.path / "config.json").is_file():
            self.config_name, self.weight_names, self.indexes = "config.json", WEIGHTS, INDEXES
        else:
            raise CheckpointError(f"a folder without config.json or {OPEN_CLIP_CONFIG} and its weights: "
                                  "not a Hugging Face, PaddleNLP or open_clip checkpoint folder (for a single file, "
                                  "give the file)", path=self.path)
        self.config_json = bounded_json.read(self.path / self.config_name, bounded_json.CONFIG)
        record = self.path / "parity.json"  # parity's record, where the weights file has no room for it
        self.record_json = bounded_json.read(record, bounded_json.RECORD) if os.path.lexists(record) else None
        self.names = self._weights()
        self.files: list[FileSource] = []
        try:
            for name in self.names:
                self.files.append(open_source(self.path / name))
        except BaseException:
            self.close()
            raise

    def _weights(self) -> list[str]:
        present = [n for n in self.weight_names if (self.path / n).is_file()]
        if present:
            return present[:1]  # a library reads the first it finds; so does parity (the others are not read)
        index = next((n for n in self.indexes if (self.path / n).is_file()), None)
        if index is None:
            raise CheckpointError(f"no weights: none of {', '.join(self.weight_names)} nor a sharded index", path=self.path)
        self.weight_map = weight_map(bounded_json.read(self.path / index, bounded_json.INDEX), self.path / index)
        shards = sorted(set(self.weight_map.values()))
        for shard in shards:
            try:
                if not stat.S_ISREG(os.stat(self.path / shard).st_mode):
                    raise CheckpointError(f"shard {shard} is not a file (named by {index})", path=self.path)
            except OSError as e:
                what = "is missing" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror})"
                raise CheckpointError(f"shard {shard} {what} (named by {index})", path=self.path) from None
        return shards

    def read(self):
        """The tensors of every weight file, merged (each shard's tensors checked against the index)."""
        from . import RawCheckpoint, read

        merged, notes, metadata, kinds, entries = {}, [], {}, set(), []
        for name, source in zip(self.names, self.files):
            raw = read(source)
            kinds.add(raw.format)
            if not isinstance(raw.content, dict):
                raise CheckpointError(f"holds a {type(raw.content).__name__}, not a state dict", path=source.name)
            wanted = {k for k, v in getattr(self, "weight_map", {}).items() if v == name}
            if wanted and set(raw.content) - {"parity@@extras"} != wanted:
                extra = sorted(map(str, set(raw.content) - wanted - {"parity@@extras"}))
                short = sorted(wanted - set(raw.content))
                raise CheckpointError(f"the shard does not hold what the index says "
                                      f"(missing {', '.join(short[:4]) or 'none'}; not in the index "
                                      f"{', '.join(extra[:4]) or 'none'})", path=source.name)
            twice = sorted(set(merged) & set(raw.content))
            if twice:
                raise CheckpointError(f"tensors also in another shard: {', '.join(twice[:4])}", path=source.name)
            merged.update(raw.content)
            notes += raw.notes
            metadata.update(raw.metadata)
            entries += [(f"{name}:{e[0]}", *e[1:]) for e in raw.entries]
        if len(kinds) > 1:
            raise CheckpointError(f"shards of different formats ({', '.join(sorted(kinds))})", path=self.path)
        metadata[self.config_name] = self.config_json
        notes += self.notes
        if self.record_json is not None:
            metadata["parity.extras"] = json.dumps(self.record_json)
        return RawCheckpoint(kinds.pop(), merged, metadata=metadata, notes=notes, entries=entries)

    def sha256(self, entries=(), stop: threading.Event | None = None) -> str:
        digest = hashlib.sha256()
        for name, source in [(self.config_name, None), *zip(self.names, self.files)]:
            if source is None:
                with open_source(self.path / name) as opened:
                    file_digest = sha256(opened, (), stop)
            else:
                file_digest = sha256(source, [e for e in entries if e[0].startswith(f"{name}:")], stop)
            digest.update(f"{name}:{file_digest}\n".encode())
        return digest.hexdigest()

    def check_unchanged(self) -> None:
        for source in self.files:
            source.check_unchanged()

    def close(self) -> None:
        for source in self.files:
            source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_input(path) -> FileInput | FolderInput:
    """A checkpoint file or folder given by a user; CheckpointError, naming it, for anything else."""
    path = Path(path)
    if stat.S_ISDIR(user_stat(path).st_mode):
        return FolderInput(path)
    return FileInput(path)


def _stats(paths) -> list[os.stat_result]:
    """The stat of each path that exists."""
    out = []
    for p in paths:
        try:
            out.append(os.stat(p))
        except OSError:
            continue
    return out


def _with_link_targets(inputs) -> list[Path]:
    """The inputs, and for an input folder the targets of the links in it: a Hugging Face cache's
    snapshot folder links each file into `blobs/`, which an output must not replace either."""
    out = []
    for given in inputs:
        if given is None:
            continue
        out.append(Path(given))
        try:
            if not stat.S_ISDIR(os.stat(given).st_mode):
                continue
            with os.scandir(given) as entries:
                out += [Path(os.path.realpath(e.path)) for e in entries if e.is_symlink()]
        except OSError:
            continue  # an input that cannot be listed: its reader says so
    return out


def refuse_overlap(out, *inputs) -> None:
    """SameFileError where the output `out` is an input (a checkpoint, a config file; None is skipped), lies
    inside one (writing there changes the input) or contains one (a folder holding it, which replacing
    would delete; for an input folder, the files its links point to count too): by name, link, hard link
    or bind mount, compared by device and inode along each path. Whether or not the output may replace
    what is there, an input is never touched."""
    out = Path(out)
    real = Path(os.path.realpath(out))
    found = _stats([real])
    above = _stats(real.parents)
    if found and not (stat.S_ISREG(found[0].st_mode) or stat.S_ISDIR(found[0].st_mode)):
        # /dev/stdout, a FIFO, a device: replacing the entry (as root, in /dev) would not write there
        raise CheckpointError("not a regular file or folder; parity writes files and folders only", path=out)
    for given in _with_link_targets(inputs):
        src = Path(given)
        try:
            src_stat = os.stat(src)
        except OSError:
            continue  # an input that is not there: its reader says so
        if found and os.path.samestat(found[0], src_stat):
            what = "folder" if stat.S_ISDIR(src_stat.st_mode) else "file"
            raise SameFileError(f"is the input {what} ({src}); parity never writes over its input", path=out)
        if any(os.path.samestat(s, src_stat) for s in above):
            raise SameFileError(f"lies inside the input folder {src}; parity never writes into its input", path=out)
        # above the input as given (a link's own folder) and above what it points to
        around = _stats([*Path(os.path.abspath(src)).parents, *Path(os.path.realpath(src)).parents])
        if found and any(os.path.samestat(found[0], s) for s in around):
            raise SameFileError(f"contains the input {src}; replacing it would delete the input", path=out)
