"""Checkpoints in and out: `load` any supported file, `save` it in any format, `convert` with every guard.

Every route goes through one canonical form, the source's own official-layout (torch) state dict with
its dtypes: a torch-layout file is that already, a Paddle-layout one becomes it through the key map and
its extras record. Each target is made from it, so every pair of formats round-trips bit for bit.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import os
import threading
import time
import zlib
from contextlib import contextmanager
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from . import __version__
from .errors import CheckpointError, NonFiniteError, OutputExistsError, SameFileError
from .keymap import (ARCHIVE_ENTRIES, Extras, Planned, StateDictError, check_keys, paddle_plan, paddle_shapes,
                     to_paddle, torch_plan, torch_row, torch_shapes)
from .formats import FORMAT_NAMES, RawCheckpoint, Source, Stored, contiguous, open_source, read
from .formats import pdparams, safetensors, torch_zip
from .formats.atomic import atomic_write
from .formats.pdparams import EXTRAS_KEY
from .variants import CLIPConfig, ConfigError, detect_layout, get_config, infer_config

TARGETS = {"paddle": ".pdparams", "torch": ".pt", "safetensors": ".safetensors"}
DTYPES = ("keep", "float32", "float16")
PADDLE_NAME_TABLE = "StructuredToParameterName@@"  # paddle.save's own entry: structured name -> variable name
WRAPPERS = ("state_dict", "model")  # {'state_dict': ...} (Chinese-CLIP, PASSL), {'model': ...}
PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, wrapper modules, torch.compile
META_PREFIX = "parity."  # safetensors metadata keys


@dataclass
class Checkpoint:
    """A CLIP checkpoint in memory: numpy tensors in one layout, and what is known of where they came from.

    `layout` is "torch" (openai/CLIP's names and shapes) or "paddle" (parity's Paddle model's).
    `extras` is parity's record (torch-only tensors, source dtypes) when the file carried one.
    Tensors are numpy arrays, or (from `convert`) `Stored` tensors read from the file when used.
    """

    state_dict: dict[str, np.ndarray]
    layout: str
    config: CLIPConfig
    format: str | None = None
    path: Path | None = None
    sha256: str | None = None
    extras: Extras | None = None
    provenance: dict = field(default_factory=dict)  # source file, its SHA-256, parity version of the writer
    unwrapped: list[str] = field(default_factory=list)  # wrappers and prefixes stripped on reading
    notes: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str | None:
        return self.config.name

    @property
    def official(self) -> bool:
        """The file is a registered official release (its SHA-256 is in the registry)."""
        return self.sha256 is not None and self.sha256 == self.config.sha256

    def torch_state(self) -> dict[str, np.ndarray]:
        """The official-layout state dict, with the source's own dtypes and torch-only tensors."""
        if self.layout == "torch":
            return dict(self.state_dict)
        return {k: p() for k, p in self.torch_plan().items()}

    def torch_plan(self) -> dict[str, Planned]:
        """`torch_state` with each tensor made only when asked for."""
        if self.layout == "torch":
            return {k: Planned(partial(_array, v), v.dtype, tuple(v.shape)) for k, v in self.state_dict.items()}
        plan, notes = torch_plan(self.state_dict, self.extras, self.config)
        self.notes.extend(n for n in notes if n not in self.notes)
        try:  # an extras record short of a buffer would otherwise make a file build_model refuses
            check_keys({k: np.broadcast_to(np.uint8(0), p.shape) for k, p in plan.items()},
                       torch_shapes(self.config), "torch state dict (after the extras record)",
                       optional=ARCHIVE_ENTRIES)
        except StateDictError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        return plan

    def in_layout(self, layout: str, dtype: str | None = "float32") -> "Checkpoint":
        """This checkpoint in `layout`; to Paddle, floats are cast to `dtype` (None keeps them)."""
        if layout == self.layout:
            return self
        if layout == "torch":
            return _replace(self, self.torch_state(), "torch", None)
        state, extras = to_paddle(self.torch_state(), self.config, dtype=dtype)
        return _replace(self, state, "paddle", extras)


def _array(a) -> np.ndarray:
    return a.read() if isinstance(a, Stored) else a


def _replace(ck: Checkpoint, state: dict, layout: str, extras: Extras | None) -> Checkpoint:
    return Checkpoint(state, layout, ck.config, ck.format, ck.path, ck.sha256, extras, dict(ck.provenance),
                      list(ck.unwrapped), list(ck.notes))


def sha256_of(source: Source | str | Path, entries: list[tuple[str, int, int, int]] = (),
              stop: threading.Event | None = None) -> str:
    """The SHA-256 of a file (a path) or of an open source; on the same pass, the CRC-32 of each
    (name, offset, length, crc) zip entry: CheckpointError if one fails. `stop` set: give up at the next
    block (the caller no longer needs the result)."""
    if not isinstance(source, Source):
        with open_source(source) as opened:
            return sha256_of(opened, entries, stop)
    digest = hashlib.sha256()
    pending = sorted(entries, key=lambda e: e[1])
    crc, position = 0, 0
    block = bytearray(1 << 22)
    while position < source.size:
        if stop is not None and stop.is_set():
            raise CheckpointError(f"{source.name}: hashing stopped")
        n = min(len(block), source.size - position)
        view = memoryview(block)[:n]
        source.readinto(position, view)
        digest.update(view)
        end = position + n
        while pending and pending[0][1] < end:
            name, start, length, expected = pending[0]
            crc = zlib.crc32(view[max(start - position, 0):max(min(start + length - position, n), 0)], crc)
            if start + length > end:
                break
            if crc != expected:
                raise CheckpointError(f"{source.name}: entry {name} fails its CRC-32 check: corrupt")
            pending.pop(0)
            crc = 0
        position = end
    if pending:
        raise CheckpointError(f"{source.name}: entry {pending[0][0]} reaches past the end of the file: truncated")
    return digest.hexdigest()


# ---------------------------------------------------------------- reading
def _as_array(value) -> np.ndarray | Stored | None:
    if isinstance(value, Stored):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    # paddle.save stores a tensor inside a nested container as (variable name, array)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray):
        return value[1]
    return None


def _is_tensor(value) -> bool:
    return _as_array(value) is not None


def _unwrap(content, path: Path) -> tuple[dict, list[str]]:
    unwrapped: list[str] = []
    while isinstance(content, Mapping) and not all(_is_tensor(v) or k in (EXTRAS_KEY, PADDLE_NAME_TABLE)
                                                   for k, v in content.items()):
        wrapper = next((w for w in WRAPPERS if isinstance(content.get(w), Mapping)), None)
        if wrapper is None:
            break
        beside = sorted(str(k) for k in content if k != wrapper)
        unwrapped.append(f"wrapper {wrapper!r}" + (f" (not read beside it: {', '.join(beside)})" if beside else ""))
        content = content[wrapper]
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a state dict")
    return dict(content), unwrapped


def _tensors(content: dict, path: Path, notes: list[str]) -> tuple[dict[str, np.ndarray], dict | None]:
    tensors, record = {}, None
    for key, value in content.items():
        if key == PADDLE_NAME_TABLE:  # Paddle's own bookkeeping, no tensor: dropped on purpose
            notes.append(f"dropped Paddle's {PADDLE_NAME_TABLE} name table")
        elif key == EXTRAS_KEY:
            record = _parse_record(value, path)
        elif not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is not a string")
        elif not _is_tensor(value):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; parity "
                                  f"unwraps {' and '.join(map(repr, WRAPPERS))} only: extract the state dict first")
        else:
            tensors[key] = _as_array(value)
    return tensors, record


def _parse_record(value, path: Path) -> dict:
    try:
        record = json.loads(value)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        return record
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: parity's {EXTRAS_KEY} entry is not a JSON object ({e})") from None


def _strip_prefixes(tensors: dict, unwrapped: list[str]) -> dict:
    stripped = True
    while stripped and tensors:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                unwrapped.append(f"prefix {prefix!r}")
                stripped = True
    return tensors


def _extras(record: dict | None, config: CLIPConfig, path: Path) -> Extras | None:
    if record is None:
        return None
    try:
        extras = Extras.from_dict(record)
        for key, dtype in extras.dtypes.items():
            np.dtype(dtype)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: parity's extras record is malformed ({e})") from None
    expected = torch_shapes(config, archive_entries=True)
    wrong = sorted(k for k in list(extras.buffers) + list(extras.dtypes)
                   if k not in expected or (k in extras.buffers and torch_row(k)[0].paddle is not None))
    if wrong:
        raise CheckpointError(f"{path}: parity's extras record names keys this {config.name or 'CLIP'} "
                              f"does not have: {', '.join(wrong[:8])}")
    return extras


def from_raw(raw: RawCheckpoint, path: Path, variant: str | None = None) -> Checkpoint:
    """A Checkpoint from what a reader returned: unwrapped, validated, its variant inferred."""
    content, unwrapped = _unwrap(raw.content, path)
    notes = list(raw.notes)
    tensors, record = _tensors(content, path, notes)
    tensors = _strip_prefixes(tensors, unwrapped)
    if raw.metadata.get(META_PREFIX + "extras"):
        record = _parse_record(raw.metadata[META_PREFIX + "extras"], path)
    if any(re.search(r"(^|\.)blocks\.\d+\.attn\.qkv\.weight$", k) for k in tensors):
        raise CheckpointError(f"{path}: this is PASSL's CLIP layout (fused 'qkv', 'blocks.{{i}}'), which parity "
                              "does not read yet (a planned reader); use a checkpoint in openai/CLIP's layout")
    try:
        layout = detect_layout(tensors)
        config = infer_config(tensors)
    except ConfigError as e:
        sample = ", ".join(list(tensors)[:3])
        raise CheckpointError(f"{path}: not a CLIP checkpoint in a layout parity reads ({e}; {len(tensors)} "
                              f"tensors, e.g. {sample}); parity reads openai/CLIP's layout and its own "
                              "Paddle layout") from None
    try:
        if layout == "torch":
            check_keys(tensors, torch_shapes(config), "torch state dict", optional=ARCHIVE_ENTRIES)
        else:
            check_keys(tensors, paddle_shapes(config), "paddle state dict")
    except StateDictError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if variant is not None:
        wanted = get_config(variant)
        if wanted.architecture() != config.architecture():
            raise CheckpointError(f"{path}: tensor shapes are those of {config.name or 'an unregistered CLIP'}, "
                                  f"not {wanted.name} as --variant says")
    extras = _extras(record, config, path)
    provenance = {k: v for k, v in (record or {}).items() if k not in ("buffers", "dtypes")}
    provenance.update({k[len(META_PREFIX):]: v for k, v in raw.metadata.items()
                       if k.startswith(META_PREFIX) and k != META_PREFIX + "extras"})
    return Checkpoint(tensors, layout, config, raw.format, path, None, extras, provenance, unwrapped, notes)


def load(path, layout: str | None = None, variant: str | None = None) -> Checkpoint:
    """Read a checkpoint of any supported format, without running code from it.

    `layout` "torch" or "paddle" converts to that layout (None: as stored); `variant` checks the
    inferred variant. Raises CheckpointError (a ParityError) with a one-line message on bad input.

    >>> ck = parity.load("RN50.pt", layout="torch")      # doctest: +SKIP
    >>> ck.config.name, len(ck.state_dict)
    ('RN50', 495)
    """
    if variant is not None:
        get_config(variant)  # an unknown name fails before the file is read
    with open_source(path) as source, ThreadPoolExecutor(1) as pool:
        stop = threading.Event()
        digest = pool.submit(sha256_of, source, (), stop)  # beside reading: hashlib releases the GIL
        try:
            ck = from_raw(read(source), Path(path), variant)
            ck.state_dict = {k: _array(v) for k, v in ck.state_dict.items()}  # each read (and checked) once
            ck.sha256 = digest.result()
            source.check_unchanged()
        except BaseException:
            stop.set()
            raise
    return ck.in_layout(layout) if layout else ck


# ---------------------------------------------------------------- writing
class Target(Mapping):
    """The tensors of a file to write, each made (and its source tensor read) when asked for, so a
    conversion holds one target tensor at a time; `spec` says dtype and shape without making.

    Inside `streaming()`, casts go into one reused buffer: each tensor is valid only until the next is made
    (what the writers and the check need), and no fresh memory is touched per tensor."""

    def __init__(self, plan: dict[str, Planned], fortran: bool):
        self.plan, self.fortran = plan, fortran
        self.scratch: np.ndarray | None = None

    def __getitem__(self, key: str) -> np.ndarray:
        planned = self.plan[key]
        a = planned.make()
        if a.dtype != planned.dtype:
            if self.scratch is None:
                a = a.astype(planned.dtype)
            else:
                order = "F" if self.fortran and a.flags.f_contiguous and not a.flags.c_contiguous else "C"
                out = self.scratch[:a.size * planned.dtype.itemsize].view(planned.dtype).reshape(a.shape, order=order)
                np.copyto(out, a, casting="unsafe")
                a = out
        # a pickle stores a Fortran-ordered array as it is, so the Paddle layout's transposed Linear weights
        # need no transposing copy in a .pdparams; the other formats store C order
        return a if self.fortran and a.flags.f_contiguous else contiguous(a)

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def spec(self, key: str) -> tuple[np.dtype, tuple]:
        return self.plan[key].dtype, self.plan[key].shape

    @contextmanager
    def streaming(self):
        largest = max((math.prod(p.shape) * p.dtype.itemsize for p in self.plan.values()), default=0)
        self.scratch = np.empty(largest, np.uint8)
        try:
            yield self
        finally:
            self.scratch = None


@dataclass
class Saved:
    path: Path
    tensors: Target  # exactly what was written (and checked after reloading), made again on demand
    layout: str
    bytes: int


def _cast(plan: dict[str, Planned], dtype: str | None) -> dict[str, Planned]:
    if dtype in (None, "keep"):
        return plan
    return {k: p._replace(dtype=np.dtype(dtype)) if p.dtype.kind == "f" else p for k, p in plan.items()}


def _record(ck: Checkpoint, extras: Extras) -> dict:
    return {"parity_version": __version__, "variant": ck.variant,
            "source": {"file": ck.path.name if ck.path else None, "sha256": ck.sha256, "format": ck.format},
            **extras.to_dict()}


def _target(ck: Checkpoint, to: str, layout: str, dtype: str | None) -> tuple[Target, Extras | None]:
    if layout == "torch":
        return Target(_cast(ck.torch_plan(), dtype), False), None
    plan, extras = paddle_plan(ck.torch_state(), ck.config, dtype=None if dtype == "keep" else dtype or "float32")
    return Target(plan, to == "paddle"), extras


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


class _Seen:
    """What a checked .pdparams array is replaced by: its position, and whether it was the planned one."""

    def __init__(self, index: int, same: bool):
        self.index, self.same = index, same


def _check_pdparams(written: Source, tensors: Mapping, record: dict | None) -> list[str]:
    keys = list(tensors)
    seen: list[_Seen] = []

    def visit(array: np.ndarray) -> _Seen:  # each array compared as it is read, then dropped
        i = len(seen)
        seen.append(_Seen(i, i < len(keys) and same_bits(array, tensors[keys[i]])))
        return seen[-1]

    content = read(written, visit=visit).content
    if not isinstance(content, dict):
        return ["the file's top level"]
    expected = keys + ([EXTRAS_KEY] if record is not None else [])
    bad = sorted(set(content) ^ set(expected))
    bad += [k for i, k in enumerate(keys) if not (isinstance(content.get(k), _Seen) and content[k].index == i
                                                   and content[k].same)]
    if record is not None and EXTRAS_KEY in content and _parse_record(content[EXTRAS_KEY], written.name) != record:
        bad.append("extras record")
    return bad


def _check_written(written: Source, to: str, tensors: Mapping, record: dict | None) -> None:
    """Read the file just written back (through the descriptor it was written with) and compare every
    tensor, byte for byte, with what was meant, one tensor at a time: the planned tensor is made again
    and the file's is read, and both are dropped before the next."""
    try:
        bad = _compare_written(written, to, tensors, record)
    except CheckpointError as e:  # unreadable, or a CRC-32 that fails: the bytes on disk are not those written
        bad = [str(e).removeprefix(f"{written.name}: ")]
    if bad:
        raise CheckpointError(f"{written.name}: the written file does not read back as written "
                              f"({', '.join(bad[:5])}); nothing was kept")


def _compare_written(written: Source, to: str, tensors: Mapping, record: dict | None) -> list[str]:
    if to == "paddle":
        bad = _check_pdparams(written, tensors, record)
    else:
        raw = read(written)
        got, got_record = _tensors(_unwrap(raw.content, written.name)[0], written.name, [])
        if raw.metadata.get(META_PREFIX + "extras"):  # safetensors keeps the record in its metadata
            got_record = _parse_record(raw.metadata[META_PREFIX + "extras"], written.name)
        bad = sorted(set(got) ^ set(tensors))
        for k in tensors:
            if k in got and not same_bits(_array(got[k]), tensors[k]):
                bad.append(k)
        if got_record != record:
            bad.append("extras record")
    return bad


def save(ck: Checkpoint, path, to: str | None = None, *, layout: str | None = None, dtype: str | None = None,
         force: bool = False, digest: Future | None = None,
         before_naming: Callable[[], None] | None = None) -> Saved:
    """Write `ck` as `to` ("paddle", "torch" or "safetensors"; default from the suffix), atomically.

    Layouts: paddle -> parity's Paddle layout with the extras record; torch -> openai/CLIP's state dict;
    safetensors -> `layout` "torch" (default) or "paddle". dtype: None gives each target what its
    framework loads as is (float32 in the Paddle layout, the source dtypes in the torch layout); "keep",
    "float32" or "float16" override. The file is written and then reloaded and compared tensor by tensor,
    one tensor at a time, before it is given its name. `digest`: the source's SHA-256 still being
    computed (it goes into the record, which a .pdparams writes last). `before_naming`: a last check.
    """
    path = Path(path)
    to = to or next((t for t, s in TARGETS.items() if path.suffix == s), None)
    if to not in TARGETS:
        raise CheckpointError(f"{path}: unknown target format; use one of {', '.join(TARGETS)}")
    if dtype not in (None, *DTYPES):
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    layout = layout or ("paddle" if to == "paddle" else "torch")
    if (to, layout) in (("paddle", "torch"), ("torch", "paddle")) or layout not in ("torch", "paddle"):
        raise CheckpointError(f"a {to} file is written in the {to} layout; --layout applies to safetensors only")
    tensors, extras = _target(ck, to, layout, dtype)
    @cache  # the record as JSON text, made once, when the source's hash is known
    def text() -> str | None:
        if digest is not None:
            ck.sha256 = digest.result()
        return json.dumps(_record(ck, extras), sort_keys=True) if extras is not None else None

    def write(f):
        with tensors.streaming():
            if to == "paddle":
                pdparams.write(f, tensors, text)
            elif to == "torch":
                torch_zip.write(f, tensors)
            else:
                safetensors.write(f, tensors, _metadata(ck, layout, text()))

    def check(written: Source):
        recorded = text()
        with tensors.streaming():
            _check_written(written, to, tensors, json.loads(recorded) if recorded else None)
        if before_naming is not None:
            before_naming()

    atomic_write(path, write, check, force=force)
    return Saved(path, tensors, layout, path.stat().st_size)


def _metadata(ck: Checkpoint, layout: str, recorded: str | None) -> dict[str, str]:
    meta = {"format": "pt" if layout == "torch" else "paddle", META_PREFIX + "layout": layout,
            META_PREFIX + "version": __version__, META_PREFIX + "variant": str(ck.variant),
            META_PREFIX + "source_file": ck.path.name if ck.path else "",
            META_PREFIX + "source_sha256": ck.sha256 or ""}
    if recorded is not None:
        meta[META_PREFIX + "extras"] = recorded
    return meta


# ---------------------------------------------------------------- convert
@dataclass
class Converted:
    source: Checkpoint
    saved: Saved
    seconds: float
    warnings: list[str]

    def summary(self) -> str:
        """One line: variant, tensors, bytes, dtype mix, seconds, output path (and what was unwrapped)."""
        mix = Counter(str(self.saved.tensors.spec(k)[0]) for k in self.saved.tensors)
        dtypes = " ".join(f"{d}×{n}" for d, n in sorted(mix.items()))
        line = (f"{self.source.variant or 'custom CLIP'}: {len(self.saved.tensors)} tensors, "
                f"{_size(self.saved.bytes)}, {dtypes}, {self.seconds:.1f} s -> {self.saved.path}")
        if self.source.unwrapped:
            line += f" (stripped {', '.join(self.source.unwrapped)})"
        return line


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


_EXPONENT = {2: np.uint16(0x7C00), 4: np.uint32(0x7F800000), 8: np.uint64(0x7FF0000000000000)}


def _has_nonfinite(v: np.ndarray, chunk: int = 1 << 20) -> bool:
    # NaN and Inf are the values whose exponent bits are all ones: an integer AND and max over the bits, in
    # chunks into one small buffer (float16 min/max and isfinite run 10x slower, without SIMD)
    mask = _EXPONENT.get(v.dtype.itemsize)
    if mask is None:  # not an IEEE binary16/32/64 layout
        return not bool(np.isfinite(v).all())
    bits = v.ravel(order="K").view(mask.dtype)  # memory order: no copy for C- or Fortran-ordered arrays
    buffer = np.empty(min(chunk, bits.size), mask.dtype)
    for start in range(0, bits.size, chunk):
        part = buffer[:min(chunk, bits.size - start)]
        np.bitwise_and(bits[start:start + chunk], mask, out=part)
        if part.max() == mask:
            return True
    return False


def nonfinite(state: Mapping[str, np.ndarray]) -> list[str]:
    """Keys of floating tensors holding NaN or Inf (a Stored tensor is read, checked and dropped)."""
    bad = []
    for k, v in state.items():
        if v.dtype.kind == "f" and v.size and _has_nonfinite(_array(v)):
            bad.append(k)
    return sorted(bad)


def default_output(src: Path, to: str) -> Path:
    return src.with_suffix(TARGETS[to])


def convert(src, to: str, out=None, *, variant: str | None = None, dtype: str | None = None,
            layout: str | None = None, force: bool = False, strict: bool = False,
            stage: Callable[[str], None] | None = None) -> Converted:
    """Convert a checkpoint file to another format; the library behind `parity convert`.

    Refuses to write over its input (`force` or not) and over an existing output (without `force`);
    NaN/Inf in a tensor is a warning, or an error with `strict`. `stage` is told each step as it starts.
    """
    start, stage = time.perf_counter(), stage or (lambda _: None)
    if to not in TARGETS:
        raise CheckpointError(f"unknown target {to!r}; use one of {', '.join(TARGETS)}")
    if variant is not None:
        get_config(variant)
    source = open_source(src)  # before the output checks: a missing input is the first thing to say
    try:  # on success the source stays open: what was written can be made again (Saved.tensors)
        out = Path(out) if out is not None else default_output(Path(src), to)
        try:
            same = os.path.samestat(os.stat(out), source.stat)  # through links, hard links and "."
        except OSError:
            same = False
        if same:
            raise SameFileError(f"{out}: is the input file; parity never writes over its input")
        if os.path.lexists(out) and not force:
            raise OutputExistsError(f"{out} already exists")
        stage(f"reading {Path(src).name}")
        # the source's tensors are read one at a time when they are needed, and its SHA-256 is computed beside
        # the conversion, on the other core: only the tensor in hand is in memory
        raw = read(source)
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(sha256_of, source, (), stop)
            try:
                ck = from_raw(raw, Path(src), variant)
                warnings = []
                bad = nonfinite(ck.state_dict)
                if bad:
                    message = f"{src}: NaN or Inf in {len(bad)} tensors ({', '.join(bad[:3])})"
                    if strict:
                        raise NonFiniteError(message)
                    warnings.append(message)
                stage(f"writing and checking {out.name}")
                # the output is named only if the source still is the file that was read
                saved = save(ck, out, to, layout=layout, dtype=dtype, force=force, digest=digest,
                             before_naming=source.check_unchanged)
            except BaseException:
                stop.set()
                raise
    except BaseException:
        source.close()
        raise
    return Converted(ck, saved, time.perf_counter() - start, warnings)


# ---------------------------------------------------------------- info
def describe(path) -> dict:
    """What `parity info` prints: format, layout, variant, tensors, dtype mix, bytes, SHA-256, official, extras."""
    with open_source(path) as source:
        raw = read(source)  # shapes and dtypes only: no tensor is read, the CRC-32s are checked on the hash pass
        ck = from_raw(raw, Path(path))
        ck.sha256 = sha256_of(source, raw.entries)
        size = source.size
    mix = Counter(str(v.dtype) for v in ck.state_dict.values())
    return {
        "file": str(ck.path), "format": FORMAT_NAMES[ck.format], "layout": ck.layout,
        "variant": ck.variant or "unregistered CLIP shape",
        "tensors": len(ck.state_dict), "parameters": sum(math.prod(v.shape) for v in ck.state_dict.values()),
        "dtypes": dict(sorted(mix.items())), "bytes": size, "sha256": ck.sha256,
        "official": f"yes, the {ck.variant} release file" if ck.official else "no (SHA-256 not in the registry)",
        "extras": (f"parity record: {len(ck.extras.buffers)} torch-only tensors, {len(ck.extras.dtypes)} source "
                   f"dtypes" + (f", from {ck.provenance['source'].get('file')}" if isinstance(
                       ck.provenance.get("source"), dict) else "")) if ck.extras else "none",
        "unwrapped": ", ".join(ck.unwrapped) or "nothing",
        "notes": ck.notes,
    }
