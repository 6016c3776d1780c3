"""The tower contract: what one tower kind says, in one place.

A CLIP is an image tower and a text tower. Each kind (`vit`, `resnet`, `clip`, `bert`) is one module of
this package that ends with `TOWER = VisionTower(...)` or `TOWER = TextTower(...)`: its hub keys and shapes
for a config, what it infers from shapes and what no tensor says, the checks of its config, and, for a
text tower, its tokenizer, canonical text and captions. The config's `vision.kind` and `text.kind` are
keys into `parity.towers.REGISTRY`; nothing else in parity tests a kind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ConfigError

Shapes = dict[str, tuple]


@dataclass(frozen=True)
class Tower:
    """What every tower kind says. `part` is "vision" or "text", the Config field it fills."""

    kind: str
    part: str
    label: str  # how `Config.describe` names it, e.g. "ViT"
    telltale: str  # a hub key only this kind has: it tells which kind a state dict holds
    hub_shapes: Callable[[Any], Shapes]  # Config -> this tower's hub keys and shapes, in openai/CLIP's order
    infer: Callable[[Mapping[str, tuple]], Any]  # hub {key: shape} -> the part's config, unsaid fields None
    check: Callable[[Any], None]  # ConfigError for a value this kind cannot have
    describe: Callable[[Any], str]  # the part's one-line description
    unknown: tuple[str, ...]  # fields no tensor says and a model needs (Config.missing names them)
    block: str  # its residual block's class, the same name in both model files (float64, layer diagnosis)
    rule: Callable[[Any], Any] | None = None  # openai's build_model rule for what no tensor says, if it builds this kind
    unsaid: tuple[str, ...] = ("heads", "activation", "eps")  # fields Config.shapes clears
    said: Callable[[Any], Any] = lambda part: part  # a part as its tensors say it (a field they say only roughly)
    attention_width: Callable[[Any], int] = lambda part: part.width  # the width its heads divide
    embeddings: tuple[str, ...] = ()  # hub keys synthetic weights draw as embeddings (std 0.02)
    # it also computes alone, outside a CLIP, giving its hidden states (both model files' `states`): a
    # diffusion pipeline's text encoder, a VLM's vision tower
    alone: bool = False
    # its projection into the shared space: "apart" (CLIP's: a tensor of its own, kept or left when the tower
    # is taken alone), "inside" (SigLIP's text head: part of the tower), "none" (SigLIP's image tower: its MAP
    # head's output is its embedding)
    projection_kind: str = "apart"
    called: str = ""  # how a refusal names it, e.g. "a BERT (Chinese-CLIP's)" (default: its label)
    prefix: str = ""  # the prefix of its hub keys ("visual." for openai's image towers; "" for CLIP's text tower)
    family: str = "clip"  # whose key maps read its keys: a layout has rows per family (CLIP's, SigLIP's)
    # hub {key: shape} -> the width of its projection into the shared space, None where it has none
    embed: Callable[[Mapping[str, tuple]], int | None] = lambda hub: None


@dataclass(frozen=True)
class VisionTower(Tower):
    calibrated: bool = False  # holds BatchNorm statistics (synthetic weights calibrate them on images)


@dataclass(frozen=True)
class TextTower(Tower):
    """A text tower also says how text reaches it. `vocab_file`, where a function takes one, is a
    checkpoint folder's own vocabulary (None: the tokenizer's default)."""

    tokenize: Callable[..., Any] = None  # (texts, context_length, vocab_file, truncate) -> int64 ids [N, context]
    canonical: Callable[[int, Any], Any] = None  # (context_length, vocab_file) -> the canonical text's ids [1, context]
    canonical_label: Callable[[int, Any], str] = None  # (context_length, vocab_file) -> how reports name it
    captions: Mapping[str, str] = field(default_factory=dict)  # photograph name -> its caption
    computable: Callable[..., str | None] = None  # (TextConfig, vocab_file, captions) -> why it cannot run, or None
    tokenizer_files: Callable[..., dict] = None  # (TextConfig, vocab_file) -> an exported folder's tokenizer files
    vocabulary: str | None = None  # the vocabulary file a checkpoint folder holds for it, e.g. "vocab.txt"
    # the image preprocessing of the models this text tower ships with (their family's, e.g. Chinese-CLIP's)
    image_preprocessing: Callable[[int], dict] = None  # image size -> resize and crop
    needs_vocabulary: bool = False  # its tokenizer is the checkpoint folder's own, with no default (SigLIP's)
    hub_first: tuple[str, ...] = ()  # its keys that openai/CLIP's state dict lists before the projections
    archive_entries: bool = False  # openai's release archives carry their int entries beside it (context, vocabulary)
    # a whole model's tensors beside its towers, with shapes: CLIP's logit scale is 0-d; SigLIP's scale and
    # bias have shape [1]
    scalars: Mapping[str, tuple] = field(default_factory=lambda: {"logit_scale": ()})
    projection: bool = True  # its projection is a hub key of its own, `text_projection` [width, embed]
    logits: str = "softmax"  # how the model turns cosines into logits: "softmax" (CLIP's) or "sigmoid" (SigLIP's)

    def tokenizes(self, vocab_file) -> bool:
        """Whether it can tokenize text with `vocab_file` (None: no folder's vocabulary): a tokenizer that is
        the folder's own (SigLIP's) cannot without one."""
        return vocab_file is not None or not self.needs_vocabulary

    def __post_init__(self):
        # the fields above default to None only because a dataclass puts defaults after its base's fields
        unset = [f for f in ("tokenize", "canonical", "canonical_label", "computable", "tokenizer_files",
                             "image_preprocessing") if getattr(self, f) is None]
        if unset or not self.captions:
            raise TypeError(f"text tower {self.kind!r} does not say {', '.join(unset) or 'its captions'}")


def block_shapes(prefix: str, w: int, mlp: int) -> Shapes:
    """openai/CLIP's ResidualAttentionBlock at `prefix`: fused attention, pre-LayerNorms, a 2-layer MLP."""
    return {f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (mlp, w), f"{prefix}.mlp.c_fc.bias": (mlp,),
            f"{prefix}.mlp.c_proj.weight": (w, mlp), f"{prefix}.mlp.c_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,)}


def shape(hub: Mapping[str, tuple], key: str) -> tuple[int, ...]:
    try:
        return tuple(hub[key])
    except KeyError:
        raise ConfigError(f"not a CLIP state dict: missing {key!r}") from None


def count(keys, prefix: str) -> int:
    """The number of distinct integer indices right after `prefix` among `keys`."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def grid(n_positions: int, what: str, extra: int = 1) -> int:
    """The side of a square grid of n_positions - extra patches (`extra`: one class or pooled position, or none)."""
    side = round(max(n_positions - extra, 0) ** 0.5)
    if side * side + extra != n_positions:
        raise ConfigError(f"{what} has {n_positions} rows, not grid**2{' + 1' if extra else ''}")
    return side


def encoder_shapes(prefix: str, layers: int, w: int, mlp: int) -> Shapes:
    """transformers' encoder at `prefix` (`{prefix}.layers.{i}`): q, k, v and out projections apart, pre-LayerNorms
    `layer_norm1`/`2`, a 2-layer MLP `fc1`/`fc2`; in its state dict's order."""
    s: Shapes = {}
    for i in range(layers):
        p = f"{prefix}.layers.{i}"
        s.update({f"{p}.layer_norm1.weight": (w,), f"{p}.layer_norm1.bias": (w,)})
        for x in ("k", "v", "q", "out"):
            s.update({f"{p}.self_attn.{x}_proj.weight": (w, w), f"{p}.self_attn.{x}_proj.bias": (w,)})
        s.update({f"{p}.layer_norm2.weight": (w,), f"{p}.layer_norm2.bias": (w,),
                  f"{p}.mlp.fc1.weight": (mlp, w), f"{p}.mlp.fc1.bias": (mlp,),
                  f"{p}.mlp.fc2.weight": (w, mlp), f"{p}.mlp.fc2.bias": (w,)})
    return s


OPENAI_RULE = dict(activation="quick_gelu", eps=1e-5)  # openai/CLIP's build_model, beside 64-wide heads and a 4x MLP
