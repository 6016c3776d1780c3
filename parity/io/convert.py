"""`convert`: a checkpoint file to another layout or format, with every guard; the library behind
`parity convert`. The source is read one tensor at a time as the target is written, its SHA-256 is
computed beside, on the other core, and the output is named only if the source is still the file read.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..config.resolve import given_config
from .checkpoint import Checkpoint, from_raw
from .content import read_array
from ..errors import NonFiniteError, OutputExistsError
from .formats.folders import open_input, refuse_overlap
from .formats.source import Stored
from .save import FORMATS, Saved, save, target_of


@dataclass
class Converted:
    source: Checkpoint
    saved: Saved
    seconds: float
    warnings: list[str]
    config_warning: str | None = None  # the output carries no config: computing with it will need one given

    def summary(self) -> str:
        """One line: model, tensors, bytes, dtype mix, seconds, output path (and what was unwrapped)."""
        mix = Counter(str(self.saved.tensors.spec(k)[0]) for k in self.saved.tensors)
        dtypes = " ".join(f"{d}×{n}" for d, n in sorted(mix.items()))
        line = (f"{self.source.label}: {len(self.saved.tensors)} tensors, "
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
    return sorted(k for k, v in state.items() if v.dtype.kind == "f" and v.size and _has_nonfinite(read_array(v)))


class _Watched(Stored):
    """A Stored tensor checked for NaN and Inf each time it is read for writing, so that a conversion
    reads its source once: `seen[key]` says whether it held any."""

    __slots__ = ("key", "seen")

    @classmethod
    def of(cls, stored: Stored, key: str, seen: dict[str, bool]) -> "_Watched":
        watched = cls.__new__(cls)
        for slot in Stored.__slots__:
            setattr(watched, slot, getattr(stored, slot))
        watched.key, watched.seen = key, seen
        return watched

    def read(self) -> np.ndarray:
        a = super().read()
        self.seen[self.key] = self.seen.get(self.key, False) or bool(a.dtype.kind == "f" and a.size and _has_nonfinite(a))
        return a


def _finite(src, bad: list[str], strict: bool) -> list[str]:
    """The warning for tensors holding NaN or Inf (NonFiniteError under `strict`)."""
    if not bad:
        return []
    message = f"{src}: NaN or Inf in {len(bad)} tensors ({', '.join(bad[:3])})"
    if strict:
        raise NonFiniteError(message)
    return [message]


def _watch(ck: Checkpoint) -> Callable[[], list[str]]:
    """Watch `ck`'s stored tensors as the conversion reads them; the returned call gives the keys of those
    holding NaN or Inf, reading (and checking) only the tensors the conversion did not read. Their zip
    entries are marked verified: the caller checks their CRC-32s on its hashing pass, before naming."""
    seen: dict[str, bool] = {}
    original = dict(ck.state_dict)
    for v in original.values():
        if isinstance(v, Stored) and v.crc is not None:
            v.source.verified.add(v.entry)
    ck.state_dict = {k: _Watched.of(v, k, seen) if type(v) is Stored and v.dtype.kind == "f" else v
                     for k, v in original.items()}

    def found() -> list[str]:
        rest = nonfinite({k: v for k, v in original.items() if k not in seen})
        return sorted({*rest, *(k for k, bad in seen.items() if bad)})
    return found


def default_output(src: Path, fmt: str, layout: str) -> Path:
    """SRC with the target's suffix; a folder: SRC's name without its suffix, then -LAYOUT."""
    if fmt == "folder":
        return src.with_name(f"{src.stem if src.suffix else src.name}-{layout}")
    return src.with_suffix(FORMATS[fmt])


def convert(src, to: str, out=None, *, config=None, dtype: str | None = None, layout: str | None = None,
            force: bool = False, strict: bool = False, stage: Callable[[str], None] | None = None,
            tower: str | None = None, projection: bool = False) -> Converted:
    """Convert a checkpoint file to layout `to` (or the legacy torch / paddle / safetensors); the library
    behind `parity convert`. No config is needed to move tensors; a known one is written with them.
    `tower` ("image" or "text") writes that tower alone, with its projection if `projection` (the layout's
    tower-only model: transformers' CLIPTextModel or CLIPTextModelWithProjection, ...).

    Refuses an output that is, contains or lies inside its input or config file (`force` or not), and an
    existing output (without `force`); NaN/Inf in a tensor is a warning, or an error with `strict`.
    `stage` is told each step as it starts.
    """
    start, stage = time.perf_counter(), stage or (lambda _: None)
    if config is not None:
        given_config(config)
    source = open_input(src)  # before the output checks: a missing input is the first thing to say
    try:  # on success the source stays open: what was written can be made again (Saved.tensors)
        target, fmt = target_of(Path(out) if out is not None else Path(src), to, layout, None)
        out = Path(out) if out is not None else default_output(Path(src), fmt, target.name)
        # the input, inside it or around it (the checkpoint, a config file): refused, `force` or not
        refuse_overlap(out, src, config if isinstance(config, (str, os.PathLike)) else None)
        if os.path.lexists(out) and not force:
            raise OutputExistsError(f"{out} already exists")
        stage(f"reading {Path(src).name}")
        raw = source.read()
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            # the zip entries' CRC-32s are checked on the hashing pass beside, awaited before the output is named
            digest = pool.submit(source.sha256, raw.entries, stop)
            try:
                ck = from_raw(raw, Path(src), config, digest.result)
                warnings, config_warning = [], None
                found = _watch(ck)  # NaN and Inf: each tensor checked as it is read to be written
                if tower is not None:
                    ck = ck.tower(tower, projection)
                if not ck.config.complete:
                    config_warning = (f"{src}: the config is unknown ({', '.join(ck.config.missing())}); the "
                                      "tensors were moved, and no config was written with them: computing with "
                                      "the output will need it given (a registered name or a JSON file)")
                stage(f"writing and checking {out.name}")

                def before_naming():  # the source's CRC-32s held, it is still the file read, finite under `strict`
                    digest.result()
                    warnings.extend(_finite(src, found(), strict))
                    source.check_unchanged()
                saved = save(ck, out, to, layout=layout, format=fmt, dtype=dtype, force=force, digest=digest,
                             before_naming=before_naming)
            except BaseException:
                stop.set()
                raise
    except BaseException:
        source.close()
        raise
    return Converted(ck, saved, time.perf_counter() - start, warnings, config_warning)
