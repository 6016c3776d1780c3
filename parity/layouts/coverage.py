"""Which registered models each layout has a place for: the coverage column of `parity layouts`."""
from __future__ import annotations

from .. import towers
from ..config import registry
from .base import Layout


def lacks(layout: Layout) -> list[str]:
    """The tower kinds, and pairs of kinds, `layout` has no place for, e.g. ['ResNet', 'BERT']."""
    vision, text = towers.REGISTRY["vision"], towers.REGISTRY["text"]
    unheld = {*(k for k in vision if k not in layout.image_kinds), *(k for k in text if k not in layout.holds)}
    # a family none of whose towers it holds is named once ("SigLIP")
    gone = [f for f in towers.FAMILIES if all(t.kind in unheld for part in (vision, text)
                                              for t in part.values() if t.family == f)]
    out = [t.label for part in (vision, text) for t in part.values() if t.kind in unheld and t.family not in gone]
    out += [towers.FAMILIES[f] for f in gone]
    out += [f"{v.label} beside a {t.label}" for text_kind, t in text.items() if text_kind in layout.holds
            for kind, v in vision.items() if kind in layout.image_kinds and kind not in layout.holds[text_kind]
            and v.family == t.family]  # a pair of two families is no model
    return out


def coverage(layout: Layout) -> str:
    """'all 25', or '19 of 25 (no ResNet)': how many registered models `layout` holds, and the tower
    kinds it has no place for."""
    whole = [e for e in registry.ENTRIES.values() if e.config.whole]
    covered = [e.name for e in whole if layout.holds_config(e.config)]
    return (f"all {len(covered)}" if len(covered) == len(whole) else
            f"{len(covered)} of {len(whole)} (no {', no '.join(lacks(layout))})")


def alone(layout: Layout) -> str:
    """'text, image' or '-': the towers it also holds alone (transformers' CLIPTextModel, ...)."""
    return ", ".join(t for t in ("text", "image") if t in layout.alone) or "-"
