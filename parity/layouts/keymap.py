"""Declarative key maps: rows of (hub pattern, layout pattern, named transform), read in both directions.

The hub is openai/CLIP's layout. In a pattern, `{i}` matches a layer index, `{p}` a dotted path, `{x}`
one lowercase word, and `{qkv}` stands for the parts one tensor splits into (q, k and v; or the transform's
own part names, e.g. q and kv). On the layout side, one hub tensor is split into layout keys; on the hub
side, the row is *fused*: the hub's parts are one layout tensor (transformers' separate q, k, v
projections are open_clip's one `qkv`), and the transform is read backwards. A row whose layout pattern is
None is a hub-only tensor, kept in parity's record. Rows are tried in order, so a catch-all row comes
last; every key is checked against the expected shapes as well.

A transform turns one tensor into its parts and back, and says the same of shapes (so that a layout's
expected key set comes from the hub's without making a tensor). Tensors travel as numpy
arrays and as plans (`Planned`), made only when written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import StateDictError
from ..io.formats.source import Stored
from ..io.tensors import Planned, Record, as_numpy, dtype_of


@dataclass(frozen=True)
class Row:
    hub: str
    layout: str | None  # None: a hub-only tensor, kept in the record
    transform: str = "same"


@dataclass(frozen=True)
class Transform:
    to_layout: Callable[[np.ndarray], list]  # hub tensor -> layout parts (views where possible)
    to_hub: Callable[[list], np.ndarray]  # layout parts -> hub tensor
    layout_shapes: Callable[[tuple], list]
    hub_shape: Callable[[list], tuple]
    parts: tuple[str, ...] = ("q", "k", "v")  # what `{qkv}` stands for, where the row has it


def _split3(a):  # [3D, ...] -> three [D, ...]
    if a.shape[0] % 3:
        raise StateDictError(f"fused q/k/v tensor of shape {list(a.shape)} does not split in three")
    return np.split(a, 3, axis=0)


def _third(shape) -> int:
    if shape[0] % 3:
        raise StateDictError(f"fused q/k/v tensor of shape {list(shape)} does not split in three")
    return shape[0] // 3


def _thirds(s):
    return [(s[0] // 3, *s[1:])] * 3


TRANSFORMS: dict[str, Transform] = {
    "same": Transform(lambda a: [a], lambda p: p[0], lambda s: [s], lambda s: s[0]),
    # torch Linear [out, in] <-> Paddle Linear [in, out]; a view, no copy
    "linear": Transform(lambda a: [a.T], lambda p: p[0].T, lambda s: [s[::-1]], lambda s: s[0][::-1]),
    # a fused [3D, ...] in_proj -> q, k, v
    "split_qkv": Transform(_split3, lambda p: np.concatenate(p, axis=0), _thirds,
                           lambda s: (3 * s[0][0], *s[0][1:])),
    # [3D, D] -> q, k, v as Paddle Linear weights [D, D] each, transposed
    "split_qkv_linear": Transform(lambda a: [p.T for p in _split3(a)],
                                  lambda p: np.concatenate([x.T for x in p], axis=0),
                                  lambda s: [(s[1], s[0] // 3)] * 3, lambda s: (3 * s[0][1], s[0][0])),
    # a 0-d scalar <-> shape [1] (logit_scale in Paddle)
    "scalar": Transform(lambda a: [a.reshape(1)], lambda p: p[0].reshape(()), lambda s: [(1,)], lambda s: ()),
    # shape [1] <-> a 0-d scalar (SigLIP's logit scale and bias: [1] in the hub, 0-d in open_clip)
    "unscalar": Transform(lambda a: [a.reshape(())], lambda p: p[0].reshape(1), lambda s: [()], lambda s: (1,)),
    # a fused [3D, ...] in_proj -> q [D, ...] and kv [2D, ...] (timm's attention pool)
    "split_q_kv": Transform(lambda a: np.split(a, [_third(a.shape)], axis=0), lambda p: np.concatenate(p, axis=0),
                            lambda s: [(s[0] // 3, *s[1:]), (2 * (s[0] // 3), *s[1:])],
                            lambda s: (s[0][0] + s[1][0], *s[0][1:]), parts=("q", "kv")),
    # [...] <-> [1, ...] and [1, 1, ...] (PASSL's embeddings)
    "batch": Transform(lambda a: [a[None]], lambda p: p[0][0], lambda s: [(1, *s)], lambda s: s[0][1:]),
    "batch2": Transform(lambda a: [a[None, None]], lambda p: p[0][0, 0], lambda s: [(1, 1, *s)],
                        lambda s: s[0][2:]),
}

_SLOTS = {"i": r"\d+", "p": r".+", "x": r"[a-z]+"}


def _regex(pattern: str, parts=("q", "k", "v")) -> re.Pattern:
    out = re.escape(pattern)
    for slot, rx in {**_SLOTS, "qkv": "|".join(parts)}.items():
        out = out.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{rx})")
    return re.compile(out)


def fused(row: Row) -> bool:
    """A row whose hub side names the parts: several hub tensors are one layout tensor."""
    return "{qkv}" in row.hub


def fill(pattern: str, groups: Mapping[str, str]) -> str:
    for slot, value in groups.items():
        pattern = pattern.replace("{" + slot + "}", value)
    return pattern


@dataclass
class KeyMap:
    """A layout's rows, compiled; maps keys (and shapes) both ways."""

    rows: tuple[Row, ...]
    compiled: list = field(init=False, repr=False)

    def __post_init__(self):
        def compiled(row):
            parts = TRANSFORMS[row.transform].parts
            return row, _regex(row.hub, parts), _regex(row.layout, parts) if row.layout else None
        self.compiled = [compiled(row) for row in self.rows]

    def hub_row(self, key: str) -> tuple[Row, dict[str, str]]:
        """The first row whose hub pattern matches `key`, with the slot values."""
        for row, rx, _ in self.compiled:
            if m := rx.fullmatch(key):
                return row, m.groupdict()
        raise StateDictError(f"no key-map row for {key!r}")

    def layout_row(self, key: str) -> tuple[Row, dict[str, str]] | None:
        for row, _, rx in self.compiled:
            if rx is not None and (m := rx.fullmatch(key)):
                return row, m.groupdict()
        return None

    def layout_keys(self, hub_key: str) -> list[str]:
        """The layout keys one hub key maps to (empty for a hub-only tensor; a fused row's one key)."""
        row, groups = self.hub_row(hub_key)
        if row.layout is None:
            return []
        if "{qkv}" in row.layout:
            return [fill(row.layout, {**groups, "qkv": s}) for s in TRANSFORMS[row.transform].parts]
        return [fill(row.layout, {k: v for k, v in groups.items() if k != "qkv"})]

    def hub_keys(self, hub_key: str) -> list[str]:
        """The hub keys that make one layout tensor with `hub_key`: itself, or a fused row's parts in order."""
        row, groups = self.hub_row(hub_key)
        if not fused(row):
            return [hub_key]
        return [fill(row.hub, {**groups, "qkv": s}) for s in TRANSFORMS[row.transform].parts]

    def hub_key(self, layout_key: str) -> str | None:
        """The hub key a layout key comes from (a fused row's first part), or None where no row reads it."""
        found = self.layout_row(layout_key)
        if found is None:
            return None
        row, groups = found
        first = TRANSFORMS[row.transform].parts[0]
        return fill(row.hub, {**{k: v for k, v in groups.items() if k != "qkv"}, **({"qkv": first} if fused(row) else {})})

    def layout_shapes(self, hub_shapes: Mapping[str, tuple]) -> dict[str, tuple]:
        """Every layout key, with its shape, for a hub key set with shapes."""
        out: dict[str, tuple] = {}
        for key, shape in hub_shapes.items():
            row, _ = self.hub_row(key)
            if row.layout is None:
                continue
            if fused(row):  # the parts' shapes make the layout tensor's
                parts = self.hub_keys(key)
                if key == parts[0] and all(k in hub_shapes for k in parts):
                    out[self.layout_keys(key)[0]] = TRANSFORMS[row.transform].hub_shape(
                        [tuple(hub_shapes[k]) for k in parts])
                continue
            out.update(zip(self.layout_keys(key), TRANSFORMS[row.transform].layout_shapes(tuple(shape))))
        return out

    def hub_shapes(self, layout_shapes: Mapping[str, tuple]) -> dict[str, tuple]:
        """The hub keys and shapes that a layout key set comes from (for reading a config off the shapes);
        layout keys that no row reads are left out (the key check names them)."""
        parts: dict[str, list] = {}
        for key, shape in layout_shapes.items():
            hub = self.hub_key(key)
            if hub is not None:
                parts.setdefault(hub, []).append((key, tuple(shape)))
        out = {}
        for hub, found in parts.items():
            row, _ = self.hub_row(hub)
            if fused(row):  # one layout tensor: its parts' shapes
                (_, shape), = found
                out.update(zip(self.hub_keys(hub), TRANSFORMS[row.transform].layout_shapes(shape)))
                continue
            wanted = self.layout_keys(hub)
            if sorted(k for k, _ in found) != sorted(wanted):
                continue  # a part missing: the key check names it
            by_key = dict(found)
            out[hub] = TRANSFORMS[row.transform].hub_shape([by_key[k] for k in wanted])
        return out


def listing(keys: list[str], limit: int = 12) -> str:
    # one line even for a foreign model's hundreds of keys
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_keys(state_dict: Mapping, expected: Mapping[str, tuple], what: str = "state dict",
               optional: Iterable[str] = ()) -> None:
    """Raise StateDictError naming every missing, unexpected and mis-shaped key (sorted)."""
    optional = set(optional)
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected) - optional)
    misshaped = sorted(f"{k} {list(state_dict[k].shape)} (expected {list(expected[k])})"
                       for k in set(state_dict) & set(expected) if tuple(state_dict[k].shape) != tuple(expected[k]))
    problems = [f"{label}: {listing(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise StateDictError(f"{what} does not fit the layout: " + "; ".join(problems))


def _part(array, transform: str, index: int) -> np.ndarray:
    # views: a split slice and/or a transpose; the cast comes after the split, so a fused q/k/v tensor is
    # cast once per part, never whole three times
    return TRANSFORMS[transform].to_layout(as_numpy(array))[index]


def from_hub(hub: Mapping, keymap: KeyMap, dtype: str | None) -> tuple[dict[str, Planned], Record]:
    """Each layout tensor as a Planned (made on demand) from a hub state dict, and the record of what the
    layout has no place for. `dtype` casts floating tensors (recorded); None keeps them."""
    plan: dict[str, Planned] = {}
    record = Record()
    for key, value in hub.items():
        value = value if isinstance(value, (Stored, Planned)) else as_numpy(value)  # read or made when needed
        row, _ = keymap.hub_row(key)
        if row.layout is None:
            record.buffers[key] = np.array(as_numpy(value))  # a copy: small, and kept
            continue
        cast = dtype is not None and value.dtype.kind == "f" and value.dtype != np.dtype(dtype)
        if cast:
            record.dtypes[key] = str(value.dtype)
        if fused(row):  # the parts make one layout tensor, planned at the first
            parts = keymap.hub_keys(key)
            if key == parts[0]:
                values = [hub[k] for k in parts]
                shape = TRANSFORMS[row.transform].hub_shape([tuple(v.shape) for v in values])
                plan[keymap.layout_keys(key)[0]] = Planned(partial(_hub_tensor, values, row.transform),
                                                           np.dtype(dtype) if cast else value.dtype, tuple(shape))
            continue
        shapes = TRANSFORMS[row.transform].layout_shapes(tuple(value.shape))
        for i, (lkey, shape) in enumerate(zip(keymap.layout_keys(key), shapes)):
            plan[lkey] = Planned(partial(_part, value, row.transform, i),
                                 np.dtype(dtype) if cast else value.dtype, tuple(shape))
    return plan, record


def _hub_tensor(parts: list, transform: str) -> np.ndarray:
    return TRANSFORMS[transform].to_hub([as_numpy(p) for p in parts])


def to_hub(state: Mapping, keymap: KeyMap, hub_shapes: Mapping[str, tuple], record: Record | None,
           defaults: Mapping[str, np.ndarray]) -> tuple[dict[str, Planned], list[str]]:
    """Each hub tensor as a Planned from a layout state dict (checked against `hub_shapes` first), and
    notes. Hub-only tensors come from the record, or from `defaults` (and a note says so)."""
    notes: list[str] = []
    plan: dict[str, Planned] = {}
    for key, shape in hub_shapes.items():
        row, groups = keymap.hub_row(key)
        if row.layout is None:
            continue
        source = record.dtypes.get(key) if record else None
        if fused(row):  # one part of a layout tensor: the transform's split, read backwards
            whole = state[keymap.layout_keys(key)[0]]
            index = TRANSFORMS[row.transform].parts.index(groups["qkv"])
            plan[key] = Planned(partial(_part, whole, row.transform, index),
                                np.dtype(source) if source else dtype_of(whole), tuple(shape))
            continue
        parts = [state[k] for k in keymap.layout_keys(key)]
        plan[key] = Planned(partial(_hub_tensor, parts, row.transform),
                            np.dtype(source) if source else dtype_of(parts[0]), tuple(shape))
    if record is not None:
        buffers = record.buffers
    else:
        buffers = dict(defaults)
        if buffers:
            notes.append(f"no parity record: restored {len(buffers)} hub-only tensors with defaults "
                         "(num_batches_tracked = 0; archive entries from the config); floating tensors keep "
                         "the file's dtype")
    plan.update({k: Planned(partial(as_numpy, v), as_numpy(v).dtype, tuple(as_numpy(v).shape))
                 for k, v in buffers.items()})
    return plan, notes
