"""Which registered models each layout has a place for: the coverage column of `parity layouts`."""
from __future__ import annotations

from types import ModuleType

from ..config import registry
from . import holds


def coverage(layout: ModuleType) -> str:
    """'all 25', or '19 of 25 (no ResNet)': how many registered models `layout` holds, and the tower
    kinds it has no place for."""
    covered = [e.name for e in registry.ENTRIES.values() if holds(layout, e.config)]
    lacks = [what for what, kinds, kind in (("ResNet", layout.KINDS, "resnet"),
                                            ("BERT", getattr(layout, "TEXT_KINDS", ("clip",)), "bert"),
                                            ("ResNet beside a BERT", getattr(layout, "BERT_KINDS", ("resnet",)),
                                             "resnet"))
             if kind not in kinds and not (what.startswith("ResNet ") and "resnet" not in layout.KINDS)]
    return (f"all {len(covered)}" if len(covered) == len(registry.ENTRIES) else
            f"{len(covered)} of {len(registry.ENTRIES)} (no {', no '.join(lacks)})")
