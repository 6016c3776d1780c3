"""A CLIP's two parts as data: the image tower's config and the text tower's, each naming its tower `kind`
(a key into `parity.towers`, which says what each kind's fields mean). Plain frozen dataclasses, a leaf
module: the towers build these, and `Config` holds one of each."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionConfig:
    """The image tower: a ViT, or openai's ModifiedResNet (a 3-conv stem, 4 stages, an attention pool)."""

    kind: str  # a vision tower kind: "vit" or "resnet"
    layers: int | tuple[int, ...]  # ViT depth, or the four ResNet stage depths
    width: int  # ViT width, or the ResNet's stem width (64 for RN50; the pool works on 32x that)
    image_size: int
    patch_size: int | None = None  # ViT only
    mlp_width: int | None = None  # ViT only
    heads: int | None = None  # ViT attention, or the ResNet's attention pool
    activation: str | None = None  # ViT MLP only (a ResNet uses ReLU)
    eps: float | None = None  # ViT LayerNorm eps (a ResNet's BatchNorm eps is torch's 1e-5)


@dataclass(frozen=True)
class TextConfig:
    """The text tower: CLIP's causal transformer over BPE tokens (kind "clip"), or another text tower kind
    of `parity.towers`. `positions` and `types` are position and token-type table sizes, for a kind that
    keeps them apart from its context."""

    width: int
    layers: int
    mlp_width: int
    context_length: int | None = 77
    vocab_size: int = 49408
    heads: int | None = None
    activation: str | None = None
    eps: float | None = None
    kind: str = "clip"
    positions: int | None = None
    types: int | None = None
