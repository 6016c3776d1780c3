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
    attention_width: Callable[[Any], int] = lambda part: part.width  # the width its heads divide
    embeddings: tuple[str, ...] = ()  # hub keys synthetic weights draw as embeddings (std 0.02)
    # it also computes alone, outside a CLIP, giving its hidden states (both model files' `states`): a
    # diffusion pipeline's text encoder, a VLM's vision tower
    alone: bool = False


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
    hub_first: tuple[str, ...] = ()  # its keys that openai/CLIP's state dict lists before the projections
    archive_entries: bool = False  # openai's release archives carry their int entries beside it (context, vocabulary)

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


def grid(n_positions: int, what: str) -> int:
    """The side of a square grid of n_positions - 1 patches (one class or pooled position)."""
    side = round((n_positions - 1) ** 0.5)
    if side * side + 1 != n_positions:
        raise ConfigError(f"{what} has {n_positions} rows, not grid**2 + 1")
    return side


OPENAI_RULE = dict(activation="quick_gelu", eps=1e-5)  # openai/CLIP's build_model, beside 64-wide heads and a 4x MLP
