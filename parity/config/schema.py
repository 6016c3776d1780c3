"""A CLIP's configuration as data, framework-neutral: a vision part, a text part, and the shared embedding.

Tensor shapes say most of it. What no tensor says (head counts, activations, LayerNorm eps) is `None`
until metadata, the registry or the user gives it: `missing()` names what is still unknown, and no model
is built from a config that misses anything. `check_shapes` refuses a config that contradicts tensors,
naming the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ..errors import ParityError
from ..io.formats import bounded_json

ACTIVATIONS = ("quick_gelu", "gelu")
# the fields that may be None: unknown until given (heads, activation, eps, a BERT's context), or another
# tower kind's (a ResNet has no patch or MLP width, a CLIP text tower no positions or token types)
OPTIONAL = frozenset(f"{tower}.{name}" for tower, names in (
    ("vision", ("patch_size", "mlp_width", "heads", "activation", "eps")),
    ("text", ("context_length", "heads", "activation", "eps", "positions", "types"))) for name in names)


class ConfigError(ParityError):
    """A configuration that is malformed, incomplete for what is asked, or contradicts the tensors."""


@dataclass(frozen=True)
class VisionConfig:
    """The image tower: a ViT, or openai's ModifiedResNet (a 3-conv stem, 4 stages, an attention pool)."""

    kind: str  # "vit" or "resnet"
    layers: int | tuple[int, ...]  # ViT depth, or the four ResNet stage depths
    width: int  # ViT width, or the ResNet's stem width (64 for RN50; the pool works on 32x that)
    image_size: int
    patch_size: int | None = None  # ViT only
    mlp_width: int | None = None  # ViT only
    heads: int | None = None  # ViT attention, or the ResNet's attention pool
    activation: str | None = None  # ViT MLP only (a ResNet uses ReLU)
    eps: float | None = None  # ViT LayerNorm eps (a ResNet's BatchNorm eps is torch's 1e-5)

    @property
    def is_vit(self) -> bool:
        return self.kind == "vit"

    @property
    def grid(self) -> int:
        return self.image_size // (self.patch_size if self.is_vit else 32)


@dataclass(frozen=True)
class TextConfig:
    """The text tower: CLIP's causal transformer over BPE tokens, pooled at the end-of-text token (kind
    "clip"), or a BERT over WordPiece tokens (kind "bert", Chinese-CLIP's): post-LayerNorm blocks, a
    padding mask, pooled at [CLS]. A BERT's context (the tokenizer's length) is in no tensor; its
    `positions` (max_position_embeddings) and `types` (token types) are."""

    width: int
    layers: int
    mlp_width: int
    context_length: int | None = 77
    vocab_size: int = 49408
    heads: int | None = None
    activation: str | None = None
    eps: float | None = None
    kind: str = "clip"
    positions: int | None = None  # BERT only
    types: int | None = None  # BERT only

    @property
    def is_bert(self) -> bool:
        return self.kind == "bert"


@dataclass(frozen=True)
class Config:
    """A whole CLIP: `embed_dim` is the width of the shared image-text space."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig

    def missing(self) -> list[str]:
        """The fields that no tensor says and that are still unknown, e.g. ['text.heads']."""
        wanted = {"vision": ("heads", "activation", "eps") if self.vision.is_vit else ("heads",),
                  "text": ("heads", "activation", "eps", "context_length") if self.text.is_bert else
                  ("heads", "activation", "eps")}
        return [f"{tower}.{name}" for tower, names in wanted.items() for name in names
                if getattr(getattr(self, tower), name) is None]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def shapes(self) -> "Config":
        """This config less what tensors cannot say: what a state dict's shapes give."""
        text = replace(self.text, heads=None, activation=None, eps=None)
        if text.is_bert:  # a BERT's context is its tokenizer's length, not its position table's
            text = replace(text, context_length=None)
        return Config(self.embed_dim, replace(self.vision, heads=None, activation=None, eps=None), text)

    def filled(self, other: "Config") -> "Config":
        """This config, its unknown fields taken from `other` (which must agree with every known one:
        ConfigError naming the first that does not)."""
        other.check_shapes(self, "this config")
        def tower(mine, theirs):
            return replace(mine, **{f.name: getattr(theirs, f.name) for f in fields(mine) if getattr(mine, f.name) is None})
        return Config(self.embed_dim, tower(self.vision, other.vision), tower(self.text, other.text))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """From `to_dict`'s form (a JSON object); ConfigError naming what is wrong."""
        try:
            vision, text = dict(data["vision"]), dict(data["text"])
            if isinstance(vision.get("layers"), list):
                vision["layers"] = tuple(vision["layers"])
            config = cls(data["embed_dim"], VisionConfig(**vision), TextConfig(**text))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a parity config ({type(e).__name__}: {e}); expected "
                              "{'embed_dim': ..., 'vision': {...}, 'text': {...}}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """ConfigError for a value no CLIP can have (wrong types, sizes under 1, widths not divisible by
        heads, ...), naming the field."""
        v, t = self.vision, self.text
        sizes = {"embed_dim": self.embed_dim, **{f"vision.{f.name}": getattr(v, f.name) for f in fields(v)},
                 **{f"text.{f.name}": getattr(t, f.name) for f in fields(t)}}
        for name, value in sizes.items():
            if value is None and name not in OPTIONAL:
                raise ConfigError(f"{name} is null: every CLIP has one")
            if name.endswith(("kind", "activation", "eps")) or value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(type(x) is int and 0 < x < 1 << 31 for x in values):
                raise ConfigError(f"{name} is {value!r}: a size is a positive integer")
        if v.kind not in ("vit", "resnet"):
            raise ConfigError(f"vision.kind is {v.kind!r}: use 'vit' or 'resnet'")
        if t.kind not in ("clip", "bert"):
            raise ConfigError(f"text.kind is {t.kind!r}: use 'clip' or 'bert'")
        if not t.is_bert and t.context_length is None:  # CLIP's own text tower: its positional embedding says it
            raise ConfigError("text.context_length is null: a CLIP text tower has one")
        if t.is_bert != (t.positions is not None and t.types is not None):
            raise ConfigError("text.positions and text.types: a BERT text tower has both, a CLIP one neither")
        if t.is_bert and t.context_length is not None and t.context_length > t.positions:
            raise ConfigError(f"text.context_length {t.context_length} is more than the BERT's {t.positions} "
                              "positions")
        if v.is_vit != isinstance(v.layers, int) or (not v.is_vit and len(v.layers) != 4):
            raise ConfigError("vision.layers: one depth for a ViT, four stage depths for a ResNet")
        if v.is_vit and (v.patch_size is None or v.mlp_width is None):
            raise ConfigError("a ViT needs vision.patch_size and vision.mlp_width")
        for name, value in (("vision.activation", v.activation), ("text.activation", t.activation)):
            if value is not None and value not in ACTIVATIONS:
                raise ConfigError(f"{name} is {value!r}: use one of {', '.join(ACTIVATIONS)}")
        attention_width = v.width if v.is_vit else v.width * 32
        for name, heads, width in (("vision.heads", v.heads, attention_width), ("text.heads", t.heads, t.width)):
            if heads is not None and (heads < 1 or width % heads):
                raise ConfigError(f"{name} is {heads}, which does not divide the width {width}")
        for name, eps in (("vision.eps", v.eps), ("text.eps", t.eps)):
            if eps is not None and (type(eps) is not float or not 0 < eps < 1):
                raise ConfigError(f"{name} is {eps!r}: a LayerNorm eps lies between 0 and 1")

    def check_shapes(self, shapes: "Config", what: str = "the tensors") -> None:
        """ConfigError naming the first field where this config contradicts `shapes` (a shapes-only config)."""
        for tower in ("embed_dim", "vision", "text"):
            mine, theirs = getattr(self, tower), getattr(shapes, tower)
            if tower == "embed_dim":
                if mine != theirs:
                    raise ConfigError(f"the config says embed_dim {mine} but {what} say {theirs}")
                continue
            for f in fields(mine):
                a, b = getattr(mine, f.name), getattr(theirs, f.name)
                if b is not None and a != b:
                    raise ConfigError(f"the config says {tower}.{f.name} {a} but {what} say {b}")

    def describe(self) -> str:
        """One line, e.g. 'ViT 12x768/32 mlp 3072 @224 heads 12 quick_gelu eps 1e-05; text 12x512 mlp 2048 ...'."""
        v, t = self.vision, self.text
        if v.is_vit:
            tower = (f"ViT {v.layers}x{v.width}/{v.patch_size} mlp {v.mlp_width} @{v.image_size} heads {v.heads} "
                     f"{v.activation} eps {v.eps}")
        else:
            tower = f"ResNet {','.join(map(str, v.layers))}x{v.width} @{v.image_size} pool heads {v.heads}"
        text = "BERT" if t.is_bert else "text"
        extra = f" positions {t.positions} types {t.types}" if t.is_bert else ""
        return (f"{tower}; {text} {t.layers}x{t.width} mlp {t.mlp_width} context {t.context_length}{extra} vocab "
                f"{t.vocab_size} heads {t.heads} {t.activation} eps {t.eps}; embed {self.embed_dim}")


def integer(value, name: str) -> int:
    """A JSON value that must be an integer (2.0 is; 2.5, true, "2" and 1e999 are not): ConfigError naming it."""
    if type(value) is float and value.is_integer() and abs(value) < 1 << 53:
        value = int(value)
    if type(value) is not int:
        raise ConfigError(f"{name} is {value!r}, not an integer")
    return value


def real(value, name: str) -> float:
    if type(value) not in (int, float) or value != value or abs(value) == float("inf"):
        raise ConfigError(f"{name} is {value!r}, not a number")
    return float(value)


def section(data: Mapping, key: str, defaults: Mapping):
    """A part of a library's config.json (e.g. text_config) over that library's defaults, and a reader of
    its integers that names the field it refuses."""
    values = {**defaults, **data.get(key, {})}
    return values, lambda name: integer(values[name], f"{key}.{name}")


def read_config_file(path: Path) -> Config:
    """A config from a JSON file in `Config.to_dict`'s form (`parity info --json` shows a file's as
    config_fields, with null for what is unknown), or such an object under a "config" key; or open_clip's
    own: a model config (model_configs/NAME.json) or a hub folder's open_clip_config.json."""
    try:
        data = bounded_json.read(path, bounded_json.CONFIG)
    except ParityError as e:  # a FIFO, a device, too large, too many values, too deep, not JSON
        raise ConfigError(str(e)) from None
    try:
        if "vision_cfg" in data or "model_cfg" in data:
            from ..layouts import open_clip
            return open_clip.config_from_model_cfg(data.get("model_cfg", data))
        return Config.from_dict(data.get("config", data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


__all__ = ["ACTIVATIONS", "Config", "ConfigError", "TextConfig", "VisionConfig", "read_config_file"]
