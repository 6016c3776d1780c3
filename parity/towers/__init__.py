"""Tower kinds as plug-ins: one module per kind, each ending in `TOWER = ...` (see `base.py` for the
contract). A config's `vision.kind` and `text.kind` are keys into `REGISTRY`; parity asks the tower, and
never tests a kind.

To add a kind: a module here, its row in `REGISTRY`, its classes in both model files (`parity/models`,
registered under the same kind), and its registry entries.
"""
from __future__ import annotations

from ..errors import ConfigError
from . import bert, clip_text, resnet, siglip_text, siglip_vit, vit
from .base import TextTower, Tower, VisionTower

# part -> kind -> tower, in the order a config's kind is listed to the user
REGISTRY: dict[str, dict[str, Tower]] = {
    "vision": {t.kind: t for t in (vit.TOWER, resnet.TOWER, siglip_vit.TOWER)},
    "text": {t.kind: t for t in (clip_text.TOWER, bert.TOWER, siglip_text.TOWER)},
}
FAMILIES = {"clip": "CLIP", "siglip": "SigLIP"}  # tower family -> its name in messages


def called(tower: Tower) -> str:
    """How a message names a tower kind: "CLIP's own text tower", "a BERT (Chinese-CLIP's)", ..."""
    return tower.called or f"a {tower.label} tower"


# where a state dict has no tower's telltale key, the error names the keys of this kind
FALLBACK = {"vision": "resnet", "text": "clip"}


def get(part: str, kind: str) -> Tower:
    """The tower of `kind` for `part` ("vision" or "text"); ConfigError naming the known kinds."""
    try:
        return REGISTRY[part][kind]
    except KeyError:
        raise ConfigError(f"{part}.kind is {kind!r}: use {' or '.join(map(repr, REGISTRY[part]))}") from None


def _part(config, part: str):
    value = getattr(config, part, config)
    if value is None:
        raise ConfigError(f"this model is {'a text' if part == 'vision' else 'an image'} tower alone: it has no "
                          f"{'image' if part == 'vision' else 'text'} tower")
    return value


def vision(config) -> VisionTower:
    """The image tower of a Config (or of its vision part); ConfigError for a text tower alone."""
    return get("vision", _part(config, "vision").kind)


def text(config) -> TextTower:
    """The text tower of a Config (or of its text part); ConfigError for an image tower alone."""
    return get("text", _part(config, "text").kind)


def of(config) -> tuple[VisionTower | None, TextTower | None]:
    """A Config's image and text towers, None for the one a tower-only config lacks."""
    return (None if config.vision is None else vision(config)), (None if config.text is None else text(config))


def family(config) -> str:
    """The family of a Config's towers ("clip", "siglip"): whose key maps read its keys. ConfigError for
    towers of two families (a SigLIP image tower beside CLIP's text tower)."""
    found = {t.family: t for t in of(config) if t is not None}
    if len(found) > 1:
        vision, text = of(config)
        raise ConfigError(f"a {vision.label} tower beside a {text.label} tower: a model's two towers are of one "
                          "family (CLIP's or SigLIP's)")
    return next(iter(found))


def vision_prefixes() -> tuple[str, ...]:
    """The prefixes of the image towers' hub keys ("visual.", "vision_model.")."""
    return tuple(dict.fromkeys(t.prefix for t in REGISTRY["vision"].values()))


def holding(part: str, hub) -> Tower:
    """The tower kind whose telltale key the hub key set holds."""
    towers = REGISTRY[part]
    return next((t for t in towers.values() if t.kind != FALLBACK[part] and t.telltale in hub),
                towers[FALLBACK[part]])


__all__ = ["FAMILIES", "REGISTRY", "called", "TextTower", "Tower", "VisionTower", "family", "get", "holding", "of", "text", "vision", "vision_prefixes"]
