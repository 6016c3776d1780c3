"""A CLIP's configuration as data, framework-neutral: a vision part, a text part, and the shared embedding.

Tensor shapes say most of it. What no tensor says (head counts, activations, LayerNorm eps) is `None`
until metadata, the registry or the user gives it: `missing()` names what is still unknown, and no model
is built from a config that misses anything. `check_shapes` refuses a config that contradicts tensors,
naming the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ..errors import ConfigError
from .. import towers
from .parts import TextConfig, VisionConfig

ACTIVATIONS = ("quick_gelu", "gelu")
# the fields that may be None: unknown until given (heads, activation, eps, a BERT's context), or another
# tower kind's (a ResNet has no patch or MLP width, a CLIP text tower no positions or token types)
OPTIONAL = frozenset(f"{tower}.{name}" for tower, names in (
    ("vision", ("patch_size", "mlp_width", "heads", "activation", "eps")),
    ("text", ("context_length", "heads", "activation", "eps", "positions", "types"))) for name in names)


@dataclass(frozen=True)
class Config:
    """A whole CLIP: `embed_dim` is the width of the shared image-text space."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig

    def missing(self) -> list[str]:
        """The fields that no tensor says and that are still unknown, e.g. ['text.heads']."""
        return [f"{part}.{name}" for part, tower in (("vision", towers.vision(self)), ("text", towers.text(self)))
                for name in tower.unknown if getattr(getattr(self, part), name) is None]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def shapes(self) -> "Config":
        """This config less what tensors cannot say: what a state dict's shapes give."""
        vision, text = towers.of(self)
        return Config(self.embed_dim, replace(self.vision, **dict.fromkeys(vision.unsaid)),
                      replace(self.text, **dict.fromkeys(text.unsaid)))

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
        vision, text = towers.get("vision", v.kind), towers.get("text", t.kind)
        text.check(t)
        vision.check(v)
        for name, value in (("vision.activation", v.activation), ("text.activation", t.activation)):
            if value is not None and value not in ACTIVATIONS:
                raise ConfigError(f"{name} is {value!r}: use one of {', '.join(ACTIVATIONS)}")
        for name, heads, width in (("vision.heads", v.heads, vision.attention_width(v)),
                                   ("text.heads", t.heads, text.attention_width(t))):
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
        vision, text = towers.of(self)
        return f"{vision.describe(self.vision)}; {text.describe(self.text)}; embed {self.embed_dim}"


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


__all__ = ["ACTIVATIONS", "Config", "ConfigError", "TextConfig", "VisionConfig"]
