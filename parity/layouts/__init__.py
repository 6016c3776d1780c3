"""Checkpoint layouts, hub and spokes: openai/CLIP's layout is the hub, every other layout is one small
module (its rows to and from the hub, a detector over the key set, its file convention), and every
conversion goes through the hub, so any-to-any round trips are bit-exact.
"""
from __future__ import annotations

from typing import Mapping

from ..config.schema import ConfigError
from . import hf, open_clip, openai, paddle, paddleclip, paddlenlp, passl, keymap as rows
from .base import Fixed, Folder, Layout
from ..io.tensors import Record
from .keymap import KeyMap, Row, StateDictError, check_keys

from .base import LAYOUTS

LAYOUTS.update({m.LAYOUT.name: m.LAYOUT for m in (openai, paddle, paddleclip, passl, hf, paddlenlp, open_clip)})
HUB = openai  # the hub's module: its key names and shapes for any config, and the config its shapes give


def get(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def holds(layout: Layout, config) -> bool:
    """Whether `layout` has a place for this CLIP's towers (an image tower kind, a text tower kind)."""
    return layout.holds_config(config)


def detect(keys) -> str:
    """The layout whose telltale keys the key set has; ConfigError for none, or for keys of two."""
    state, keys = keys, set(keys)
    found = [name for name, layout in LAYOUTS.items() if layout.detect(keys)]
    if len(found) > 1 and isinstance(state, Mapping):
        # the same names in two layouts (SigLIP's text tower alone in hf's and in Paddle's, whose Linears
        # are transposed): the layouts whose shapes the tensors fit
        found = [name for name in found if _fits(state, name)] or found
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"keys of more than one layout ({', '.join(found)})")
    raise ConfigError("not a CLIP state dict in a layout parity reads: no telltale key of "
                      f"{', '.join(LAYOUTS)}")


def _fits(state, name: str) -> bool:
    try:
        shapes_of(state, name)
    except (ConfigError, StateDictError):
        return False
    return True


def shapes_of(state, name: str):
    """The shapes-only config of a state dict in layout `name`, its keys checked against it (sorted
    missing / unexpected / mis-shaped lists): StateDictError or ConfigError."""
    layout = get(name)
    keymap = layout.rows_for(state)
    shapes = HUB.infer(keymap.hub_shapes({k: v.shape for k, v in state.items()}))
    optional = HUB.ARCHIVE_ENTRIES if name == HUB.NAME else ()
    check_keys(state, keymap.layout_shapes(HUB.shapes(shapes)), f"{layout.name} state dict", optional)
    return shapes


def to_layout(hub: Mapping, name: str, dtype: str | None = "float32") -> tuple[dict, Record]:
    """A hub state dict (checked first) in layout `name`, and the record of what that layout has no
    place for. Into a Paddle layout, floats are cast to `dtype` (None keeps them)."""
    shapes = shapes_of(hub, HUB.NAME)
    layout = get(name)
    plan, record = rows.from_hub(hub, layout.rows_for(shapes), dtype if layout.framework == "paddle" else None)
    return {k: p() for k, p in plan.items()}, record


def to_hub(state: Mapping, name: str, record: Record | None = None,
           archive_entries: bool = False) -> tuple[dict, list[str]]:
    """A state dict in layout `name` (checked first) as a hub state dict, restored exactly with its record;
    without one, hub-only tensors get defaults (BatchNorm counters 0, with `archive_entries` the archive
    entries from the shapes) and the notes say so."""
    shapes = shapes_of(state, name)
    plan, notes = rows.to_hub(state, get(name).rows_for(shapes), HUB.shapes(shapes), record,
                              HUB.defaults(shapes, archive_entries))
    return {k: p() for k, p in plan.items()}, notes


__all__ = ["HUB", "LAYOUTS", "Fixed", "Folder", "KeyMap", "Layout", "Row", "StateDictError", "check_keys", "detect", "get",
           "holds", "shapes_of", "to_hub", "to_layout"]
