"""openai/CLIP's layout, the hub: its key names and shapes for any config, and the config its shapes give.

Every other layout maps to and from this one. Files: a TorchScript release archive, a `torch.save` state
dict (also wrapped, or with a `module.` prefix), or safetensors.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .. import towers
from ..config.schema import Config, ConfigError
from ..towers.base import shape
from .base import Layout
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "openai", "torch"
FILES = "torch .pt (TorchScript release archive or state dict), safetensors"
ARCHIVE_ENTRIES = ("input_resolution", "context_length", "vocab_size")  # the releases' three int buffers
KEYMAP = KeyMap((Row("{p}", "{p}"),))  # the hub maps to itself


def detect(keys) -> bool:
    if "bert.embeddings.word_embeddings.weight" in keys:  # Chinese-CLIP: openai's image towers, a BERT
        return any(k.endswith("attn.in_proj_weight") for k in keys) or "visual.bn1.running_mean" in keys
    # a whole CLIP, its text tower alone, or its ViT image tower alone
    return any(k.endswith("attn.in_proj_weight") for k in keys) and (
        "token_embedding.weight" in keys or "visual.class_embedding" in keys)


TOWERS = ("image", "text")


SCALARS = ("logit_scale", "logit_bias")  # a whole model's tensors beside its towers (SigLIP's bias too)


def towers_of(key: str) -> tuple[str, ...]:
    """The towers a hub key belongs to: the logit scale (and bias) to both (a one-tower model holds it too)."""
    if key in SCALARS:
        return TOWERS
    if key in ARCHIVE_ENTRIES:
        return ()
    return ("image",) if key.startswith(towers.vision_prefixes()) else ("text",)


def tower_shapes(config: Config, towers=TOWERS) -> dict[str, tuple]:
    """The hub keys, with shapes, of a model of these towers only."""
    return {k: s for k, s in shapes(config).items() if set(towers_of(k)) & set(towers)}


def shapes(config: Config, archive_entries: bool = False) -> dict[str, tuple]:
    """Every key of the hub state dict for `config`, with its shape, in openai/CLIP's order (its text
    tower's leading keys, the projection and scale, the image tower, the rest of the text tower). A tower
    alone has its own keys and its projection, where it has one, and no logit scale. The text tower says
    the model's own tensors (CLIP's 0-d scale; SigLIP's scale and bias, of shape [1])."""
    vision, text = towers.of(config)
    if vision and text:
        towers.family(config)
    own = text.hub_shapes(config) if text else {}
    s = {k: own[k] for k in (text.hub_first if text else ())}
    if text and text.projection and config.embed_dim is not None:
        s["text_projection"] = (config.text.width, config.embed_dim)
    if config.whole:
        s.update(text.scalars)
    s.update(vision.hub_shapes(config) if vision else {})
    s.update(own)
    if archive_entries and config.whole and text.archive_entries:
        s.update({k: () for k in ARCHIVE_ENTRIES})
    return s


def defaults(config: Config, archive_entries: bool = False) -> dict[str, np.ndarray]:
    """Hub-only tensors, where no record says them: BatchNorm's counters at 0, the archive entries from the config."""
    out = {k: np.array(0, dtype=np.int64) for k in shapes(config) if k.endswith("num_batches_tracked")}
    if archive_entries and config.whole:
        out.update({"input_resolution": np.array(config.vision.image_size, dtype=np.int64),
                    "context_length": np.array(config.text.context_length, dtype=np.int64),
                    "vocab_size": np.array(config.text.vocab_size, dtype=np.int64)})
    return out


def rule(shapes: Config) -> Config:
    """openai/CLIP's `build_model` rule for what no tensor says: 64-wide heads, QuickGELU, LayerNorm eps
    1e-5, and an MLP 4x the width. Libraries ported from it (paddleclip, PASSL) build every CLIP so."""
    vision, text = towers.of(shapes)
    if text is not None and text.rule is None:
        raise ConfigError(f"openai's rule builds CLIP's own text tower, not a {text.label}")
    return Config(shapes.embed_dim, vision and vision.rule(shapes.vision), text and text.rule(shapes.text))


def infer(hub: Mapping[str, tuple]) -> Config:
    """What the shapes of a hub key set say: every field but heads, activations and eps (None). A key set
    with one tower's keys alone is that tower alone, its projection's width the embed_dim (None without).

    Works on any {key: shape}; the key check against `shapes(config)` comes after.
    """
    has_vision = any(k.startswith(towers.vision_prefixes()) for k in hub)
    has_text = any(t.telltale in hub for t in towers.REGISTRY["text"].values()) or not has_vision
    vision = towers.holding("vision", hub) if has_vision else None
    text = towers.holding("text", hub) if has_text else None
    embed = (text or vision).embed(hub)  # the text tower's projection says it for a whole model
    if vision and text and embed is None:
        shape(hub, "text_projection")  # ConfigError: a whole CLIP without its projection
    return Config(embed, vision and vision.infer(hub), text and text.infer(hub))


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="pt", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit", "resnet"), "bert": ("vit", "resnet")},
                alone=("image", "text"), families={"siglip": KEYMAP})
