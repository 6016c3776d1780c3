"""Checkpoints out: `save` a Checkpoint in any layout and file format, atomically, one tensor at a time,
and read back and compared, tensor by tensor, before the file gets its name.

Every target is made from the hub (openai) state dict through the target layout's rows, so every pair
of layouts round-trips bit for bit: what a layout has no place for (hub-only tensors, dtypes before a
cast to float32) goes into parity's record, with the config when it is known.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import layouts
from ..version import __version__
from .checkpoint import META_PREFIX, Checkpoint
from .content import parse_record, tensors_of, unwrap
from ..errors import CheckpointError
from .formats import Source, Stored, contiguous, pdparams, read, safetensors, torch_zip
from .formats.source import hash_range
from .formats.atomic import atomic_folder, atomic_write
from .formats.pdparams import EXTRAS_KEY, Placed
from .tensors import Digest, Planned, Record, digest

FORMATS = {"pt": ".pt", "pdparams": ".pdparams", "safetensors": ".safetensors", "folder": ""}  # -> suffix
DTYPES = ("keep", "float32", "float16")
LEGACY = {"torch": ("openai", "pt"), "paddle": ("paddle", "pdparams"), "safetensors": (None, "safetensors")}


class Target(Mapping):
    """The tensors of a file to write, each made (and its source tensor read) when asked for, so a
    conversion holds two target tensors at a time; `spec` says dtype and shape without making.

    Inside `streaming(order)`, the tensor after the one asked for (in `order`) is made on a second thread
    while the first is written (numpy's casts and the file reads release the GIL), into two reused buffers:
    each tensor is valid only until the next is asked for, and no fresh memory is touched per tensor.
    Each tensor given is also digested (`digest`: its dtype, shape, memory order and XXH3-128), which is
    what the file read back is compared with."""

    def __init__(self, plan: dict[str, Planned], fortran: bool):
        self.plan, self.fortran = plan, fortran
        self.digests: dict[str, Digest] = {}
        self._scratch: list[np.ndarray] = []
        self._ahead: tuple[str, Future, int] | None = None  # the next tensor, being made into _scratch[i]
        self._held = 0  # the buffer of the tensor last given
        self._next: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _make(self, key: str, scratch: np.ndarray | None) -> np.ndarray:
        planned = self.plan[key]
        a = planned.make()
        if a.dtype != planned.dtype:
            if scratch is None:
                a = a.astype(planned.dtype)
            else:
                order = "F" if self.fortran and a.flags.f_contiguous and not a.flags.c_contiguous else "C"
                out = scratch[:a.size * planned.dtype.itemsize].view(planned.dtype).reshape(a.shape, order=order)
                np.copyto(out, a, casting="unsafe")
                a = out
        # a pickle stores a Fortran-ordered array as it is, so a Paddle layout's transposed Linear weights
        # need no transposing copy in a .pdparams; the other formats store C order
        return a if self.fortran and a.flags.f_contiguous else contiguous(a)

    def __getitem__(self, key: str) -> np.ndarray:
        if self._pool is None:
            a = self._make(key, None)
        else:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[0] == key:
                a = ahead[1].result()
                self._held = ahead[2]
            else:
                if ahead is not None:  # asked out of order: what was made ahead is dropped (one maker at a time)
                    ahead[1].cancel() or ahead[1].exception()
                self._held = 1 - self._held
                a = self._make(key, self._scratch[self._held])
            following = self._next.get(key)
            if following is not None:  # made into the other buffer while `a` is written
                other = 1 - self._held
                self._ahead = (following, self._pool.submit(self._make, following, self._scratch[other]), other)
        self.digests[key] = digest(a)
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def spec(self, key: str) -> tuple[np.dtype, tuple]:
        return self.plan[key].dtype, self.plan[key].shape

    @contextmanager
    def streaming(self, order: list[str] | None = None):
        """Make the tensors one ahead, in `order` (the plan's by default: the order the writer asks)."""
        order = list(self.plan) if order is None else order
        largest = max((math.prod(p.shape) * p.dtype.itemsize for p in self.plan.values()), default=0)
        self._scratch = [np.empty(largest, np.uint8), np.empty(largest, np.uint8)]
        self._next = dict(zip(order, order[1:]))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="parity-make")
        try:
            yield self
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)  # never leave a thread writing a buffer about to be dropped
            self._pool, self._ahead, self._scratch, self._next = None, None, [], {}


@dataclass
class Saved:
    path: Path
    tensors: Target  # exactly what was written (checked by digest after reading back), made again on demand
    layout: str
    format: str
    bytes: int


def _cast(plan: dict[str, Planned], dtype: str | None) -> dict[str, Planned]:
    if dtype in (None, "keep"):
        return plan
    return {k: p._replace(dtype=np.dtype(dtype)) if p.dtype.kind == "f" else p for k, p in plan.items()}


def _target(ck: Checkpoint, layout, fmt: str, dtype: str | None) -> tuple[Target, Record | None]:
    """The tensors to write, and the record (None where the target is the hub, which needs none)."""
    if layout.name == layouts.HUB.NAME:
        return Target(_cast(ck.hub_plan(), dtype), False), None
    default = "float32" if layout.framework == "paddle" else None  # Paddle computes float32 on a CPU
    # the hub as a plan: each hub tensor is made (and its source tensors read) only when its target is
    plan, record = layouts.rows.from_hub(ck.hub_plan(), layout.rows_for(ck.config), None if dtype == "keep" else dtype or default)
    return Target(plan, fmt == "pdparams"), record


def _record(ck: Checkpoint, record: Record) -> dict:
    out = {"parity_version": __version__, "model": ck.name,
           "source": {"file": ck.path.name if ck.path else None, "sha256": ck.sha256, "format": ck.format},
           **record.to_dict()}
    if ck.config.complete:
        out["config"] = ck.config.to_dict()
    return out


def _words(a: np.ndarray) -> np.ndarray:
    # a contiguous array's bytes (in memory order) as the widest unsigned words that tile it
    flat = a.ravel(order="K").view(np.uint8)
    width = next(w for w in (8, 4, 2, 1) if flat.size % w == 0)
    return flat.view(f"u{width}")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (NaN payloads included), without copying either array."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if (a.flags.c_contiguous and b.flags.c_contiguous) or (a.flags.f_contiguous and b.flags.f_contiguous):
        return bool(np.array_equal(_words(a), _words(b)))
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    bits = np.dtype(f"u{a.dtype.itemsize}")  # a same-size view works on any strides
    return bool(np.array_equal(a.view(bits), b.view(bits)))


def _compare_pdparams(written: Source, digests: Mapping[str, Digest], record: dict | None,
                      wrap: tuple[str, str] | None) -> list[str]:
    top = read(written, unread=True).content  # each array's bytes hashed where they lie, never held
    if not isinstance(top, dict):
        return ["the file's top level"]
    expected = [wrap[0]] if wrap is not None else list(digests)
    expected += [EXTRAS_KEY] if record is not None else []
    bad = sorted(map(str, set(top) ^ set(expected)))
    content = top.get(wrap[0], {}) if wrap is not None else top
    prefix = wrap[1] if wrap is not None else ""
    if not isinstance(content, dict):
        return bad + [f"the {wrap[0]!r} entry"]
    if wrap is not None:
        bad += sorted(set(content) ^ {prefix + k for k in digests})
    block = bytearray(1 << 20)

    def same(key: str) -> bool:
        got = content.get(prefix + key)
        return isinstance(got, Placed) and digests[key] == Digest(
            got.dtype.str, got.shape, got.fortran, hash_range(written, got.offset, got.nbytes, block))
    bad += [k for k in digests if not same(k)]
    if record is not None and EXTRAS_KEY in top and parse_record(top[EXTRAS_KEY], written.name) != record:
        bad.append("parity record")
    return bad


def _compare(written: Source, fmt: str, digests: Mapping[str, Digest], record: dict | None,
             wrap: tuple[str, str] | None = None) -> list[str]:
    if fmt == "pdparams":
        return _compare_pdparams(written, digests, record, wrap)
    raw = read(written)
    got, got_record = tensors_of(unwrap(raw.content, written.name)[0], written.name, [])
    if raw.metadata.get(META_PREFIX + "extras"):  # safetensors keeps the record in its metadata
        got_record = parse_record(raw.metadata[META_PREFIX + "extras"], written.name)
    bad = sorted(set(got) ^ set(digests))
    for k in digests:
        if k in got and digest(contiguous(got[k].read() if isinstance(got[k], Stored) else got[k])) != digests[k]:
            bad.append(k)
    if got_record != record:
        bad.append("parity record")
    return bad


def check_written(written: Source, fmt: str, tensors: Target, record: dict | None,
                  wrap: tuple[str, str] | None = None) -> None:
    """Read the file just written back (through the descriptor it was written with) and compare every
    tensor with what was meant, one tensor at a time: its dtype, shape, memory order and the XXH3-128 of
    its bytes with those of the planned tensor, taken as it was made for writing (not from what the writer
    was given), so that no tensor is made twice. Every planned tensor must have been made."""
    missing = [k for k in tensors if k not in tensors.digests]
    try:
        bad = missing or _compare(written, fmt, {k: tensors.digests[k] for k in tensors}, record, wrap)
    except CheckpointError as e:  # unreadable, or a CRC-32 that fails: the bytes on disk are not those written
        bad = [str(e).removeprefix(f"{written.name}: ")]
    if bad:
        raise CheckpointError(f"the written file does not read back as written "
                              f"({', '.join(bad[:5])}); nothing was kept", path=written.name)


def _metadata(ck: Checkpoint, layout: str, recorded: str | None) -> dict[str, str]:
    meta = {"format": "pt" if layouts.get(layout).framework == "torch" else "paddle",
            META_PREFIX + "layout": layout, META_PREFIX + "version": __version__,
            META_PREFIX + "model": str(ck.name), META_PREFIX + "source_file": ck.path.name if ck.path else "",
            META_PREFIX + "source_sha256": ck.sha256 or ""}
    if ck.config.complete:
        meta[META_PREFIX + "config"] = json.dumps(ck.config.to_dict(), sort_keys=True)
    if recorded is not None:
        meta[META_PREFIX + "extras"] = recorded
    return meta


def target_of(path: Path, to: str | None, layout: str | None, fmt: str | None) -> tuple[object, str]:
    """The layout module and file format to write: from `to` (a layout name, or the legacy torch /
    paddle / safetensors), `layout`, `fmt`, or the path's suffix."""
    if to in LEGACY:
        legacy_layout, fmt = LEGACY[to]
        layout = layout or legacy_layout
    elif to is not None:
        layout = to
    if fmt is None and layout is None:
        fmt = next((f for f, s in FORMATS.items() if s and path.suffix == s), None)
    if layout is None:
        layout = "paddle" if fmt == "pdparams" else "openai"
    target = layouts.get("openai" if layout == "torch" else layout)
    fmt = fmt or target.format
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown file format; use one of {', '.join(FORMATS)}", path=path)
    if (fmt, target.framework) in (("pt", "paddle"), ("pdparams", "torch")):
        raise CheckpointError(f"a {fmt} file holds a {'torch' if fmt == 'pt' else 'Paddle'} layout, not "
                              f"{target.name}; safetensors holds any")
    if (fmt == "folder") != (target.format == "folder"):
        raise CheckpointError(f"the {target.name} layout is written as {'a folder' if target.format == 'folder' else 'a file'}")
    return target, fmt


def save(ck: Checkpoint, path, to: str | None = None, *, layout: str | None = None, format: str | None = None,
         dtype: str | None = None, force: bool = False, digest: Future | None = None,
         before_naming: Callable[[], None] | None = None) -> Saved:
    """Write `ck` in a layout and file format, atomically; return what was written.

    `to`: a layout name ("openai", "paddle") or the legacy "torch" (openai, .pt), "paddle" (.pdparams),
    "safetensors" (with `layout`, openai by default); without it, the path's suffix decides. dtype: None
    gives each target what its framework loads as is (float32 in a Paddle layout, the source dtypes in
    a torch layout); "keep", "float32" or "float16" override. The file is written, read back and compared
    tensor by tensor before it gets its name. `digest`: the source's SHA-256 still being computed (it goes
    into the record, which a .pdparams writes last). `before_naming`: a last check.
    """
    path = Path(path)
    if dtype not in (None, *DTYPES):
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    target, fmt = target_of(path, to, layout, format)
    refused = target.refuses(ck.config, ck.name)
    if refused:
        raise CheckpointError(refused)
    wrap = target.wrap if fmt == "pdparams" else None
    tensors, record = _target(ck, target, fmt, dtype)
    if record is None and fmt == "pt":  # the hub needs no record for its tensors, but the config travels too
        record = Record()

    @cache  # the record as JSON text, made once, when the source's hash is known
    def text() -> str | None:
        if digest is not None:
            ck.sha256 = digest.result()
        return json.dumps(_record(ck, record), sort_keys=True) if record is not None else None

    def write(f):
        with tensors.streaming(safetensors.order(tensors) if fmt == "safetensors" else None):
            if fmt == "pdparams":
                pdparams.write(f, tensors, text, wrap)
            elif fmt == "pt":
                torch_zip.write(f, tensors, text)
            else:
                safetensors.write(f, tensors, _metadata(ck, target.name, text()))

    def check(written: Source):
        recorded = text()
        check_written(written, fmt, tensors, json.loads(recorded) if recorded else None, wrap)
        if before_naming is not None:
            before_naming()

    if fmt == "folder":
        return _save_folder(ck, path, target, tensors, text, before_naming, force)
    size = atomic_write(path, write, check, force=force)
    return Saved(path, tensors, target.name, fmt, size)


def _save_folder(ck: Checkpoint, path: Path, target, tensors: Target, text: Callable[[], str | None],
                 before_naming: Callable[[], None] | None, force: bool) -> Saved:
    """A `from_pretrained` folder: config.json (which needs the whole config), the weights (checked as a
    file is), parity's record where the weights file has no room for it, and the layout's other files."""
    config = ck.require_config()
    folder = target.folder
    config_name = folder.config_file
    # a folder written in its own layout keeps what only its library reads (hf's text token ids)
    source_json = ck.library_config if ck.layout == target.name else None
    config_json = json.dumps(folder.config_to_json(config, source_json), indent=2).encode()
    if folder.weights.endswith(".safetensors"):
        def weights(f):
            with tensors.streaming(safetensors.order(tensors)):
                safetensors.write(f, tensors, _metadata(ck, target.name, text()))
        fmt = "safetensors"
    else:
        def weights(f):  # a library loads this file strictly: the record goes into parity.json
            with tensors.streaming():
                pdparams.write(f, tensors, None)
        fmt = "pdparams"

    def check_weights(written: Source):
        recorded = text() if fmt == "safetensors" else None
        check_written(written, fmt, tensors, json.loads(recorded) if recorded else None)
        if before_naming is not None:
            before_naming()

    files = [(config_name, lambda f: f.write(config_json), None), (folder.weights, weights, check_weights)]
    if fmt == "pdparams" and text() is not None:
        files.append(("parity.json", lambda f: f.write(text().encode()), None))
    files += [(name, lambda f, data=data: f.write(data), None)
              for name, data in folder.extra_files(config, ck.vocab_file).items()]
    size = atomic_folder(path, files, force=force)
    return Saved(path, tensors, target.name, "folder", size)
