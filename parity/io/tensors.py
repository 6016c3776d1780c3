"""Tensor primitives, in memory: a tensor made only when asked for (`Planned`), what a layout has no place
for (`Record`), and numpy views of any framework's tensors. Shared by the key maps, the writers and the
model builders."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import numpy as np
import xxhash

from .formats.source import Stored


def as_numpy(x) -> np.ndarray:
    """numpy view of a torch/paddle tensor or array-like (a Stored tensor: read; a Planned one: made),
    without copying where possible."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (Stored, Planned)):
        return x() if isinstance(x, Planned) else x.read()
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def dtype_of(x) -> np.dtype:  # without reading a Stored tensor or making a Planned one
    return x.dtype if isinstance(x, (np.ndarray, Stored, Planned)) else as_numpy(x).dtype


class Digest(NamedTuple):
    """What a written tensor is checked against when read back: dtype, shape, memory order and the
    XXH3-128 hash of its bytes in that order (a non-cryptographic hash: two different byte strings share
    one with probability 2**-128; it runs at memory speed, some 10x zlib's CRC-32 here)."""

    dtype: str
    shape: tuple
    fortran: bool
    hash: int


def digest(a: np.ndarray) -> Digest:
    """A C- or Fortran-contiguous array's Digest, without copying it."""
    fortran = not a.flags.c_contiguous
    return Digest(a.dtype.str, tuple(a.shape), fortran, xxhash.xxh3_128_intdigest(a.ravel(order="K").view(np.uint8)))


class Planned(NamedTuple):
    """One target tensor, made only when asked for: a conversion holds one such tensor at a time.

    `make` gives it in the source's dtype (often a view of the source); `dtype` is what it is cast to."""

    make: Callable[[], np.ndarray]
    dtype: np.dtype
    shape: tuple

    def __call__(self) -> np.ndarray:
        a = self.make()
        # astype keeps the memory order (K), so a transposed Linear weight stays Fortran-ordered
        return a if a.dtype == self.dtype else a.astype(self.dtype)


@dataclass
class Record:
    """What a layout has no place for, so that the way back to the hub is exact: hub-only tensors, and
    each tensor's dtype before a cast."""

    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # hub-only tensors by hub key
    dtypes: dict[str, str] = field(default_factory=dict)  # hub key -> its dtype before a cast

    def to_dict(self) -> dict:
        """A JSON-able form (to store beside the tensors)."""
        return {"buffers": {k: {"dtype": str(v.dtype), "value": v.tolist()} for k, v in self.buffers.items()},
                "dtypes": dict(self.dtypes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Record":
        """From `to_dict`'s form, as read from a file (already bounded by the JSON reader): every dtype one
        of the numeric ones parity writes (a dtype such as "S1000000000" or "O" would make numpy allocate
        from the file's say-so, or hold objects), every value numbers in nested lists; ValueError otherwise."""
        buffers, dtypes = d.get("buffers", {}), d.get("dtypes", {})
        if not isinstance(buffers, Mapping) or not isinstance(dtypes, Mapping):
            raise ValueError("buffers and dtypes are JSON objects")
        out = {}
        for key, entry in buffers.items():
            if not isinstance(entry, Mapping) or set(entry) != {"dtype", "value"}:
                raise ValueError(f"buffer {key!r} is not {{'dtype': ..., 'value': ...}}")
            try:
                out[key] = np.asarray(_numbers(entry["value"], key), dtype=record_dtype(entry["dtype"], key))
            except OverflowError:  # 10**30, or inf (1e400), as an int64; -1 as a uint8
                raise ValueError(f"buffer {key!r} holds a value out of range for {entry['dtype']}") from None
        # a dtype before a cast: parity casts floating tensors only, so it names a floating dtype
        return cls(out, {key: str(record_dtype(value, key, FLOAT_DTYPES)) for key, value in dtypes.items()})

    def __bool__(self) -> bool:
        return bool(self.buffers or self.dtypes)


# the dtypes a record may name: the numeric ones parity writes (a hub tensor's, or a hub-only buffer's)
RECORD_DTYPES = frozenset(("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                           "float16", "float32", "float64"))


FLOAT_DTYPES = frozenset(("float16", "float32", "float64"))


def record_dtype(name, key, allowed: frozenset = RECORD_DTYPES) -> np.dtype:
    """A dtype named in a record: one of `allowed`, else ValueError naming the key."""
    if not isinstance(name, str) or name not in allowed:
        what = "floating" if allowed is FLOAT_DTYPES else "numeric"
        raise ValueError(f"{key!r} has dtype {str(name)[:40]!r}, not one of the {what} dtypes parity writes")
    return np.dtype(name)


def _numbers(value, key):
    """A record buffer's value: a number, or nested lists of numbers (no strings, objects or nulls)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif type(item) not in (int, float, bool):
            raise ValueError(f"buffer {key!r} holds a {type(item).__name__}, not a number")
    return value
