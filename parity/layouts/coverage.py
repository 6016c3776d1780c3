"""Which registered models each layout has a place for: the coverage column of `parity layouts`."""
from __future__ import annotations

from .. import towers
from ..config import registry
from .base import Layout


def lacks(layout: Layout) -> list[str]:
    """The tower kinds, and pairs of kinds, `layout` has no place for, e.g. ['ResNet', 'BERT']."""
    vision, text = towers.REGISTRY["vision"], towers.REGISTRY["text"]
    out = [t.label for kind, t in vision.items() if kind not in layout.image_kinds]
    out += [t.label for kind, t in text.items() if kind not in layout.holds]
    out += [f"{v.label} beside a {t.label}" for text_kind, t in text.items() if text_kind in layout.holds
            for kind, v in vision.items() if kind in layout.image_kinds and kind not in layout.holds[text_kind]]
    return out


def coverage(layout: Layout) -> str:
    """'all 25', or '19 of 25 (no ResNet)': how many registered models `layout` holds, and the tower
    kinds it has no place for."""
    covered = [e.name for e in registry.ENTRIES.values() if layout.holds_config(e.config)]
    return (f"all {len(covered)}" if len(covered) == len(registry.ENTRIES) else
            f"{len(covered)} of {len(registry.ENTRIES)} (no {', no '.join(lacks(layout))})")
