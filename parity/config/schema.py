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

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")  # gelu: the exact (erf) form; gelu_tanh: its tanh approximation
# the fields that may be None: unknown until given (heads, activation, eps, a BERT's context), or another
# tower kind's (a ResNet has no patch or MLP width, a CLIP text tower no positions or token types)
OPTIONAL = frozenset(f"{tower}.{name}" for tower, names in (
    ("vision", ("patch_size", "mlp_width", "heads", "activation", "eps")),
    ("text", ("context_length", "heads", "activation", "eps", "positions", "types"))) for name in names)


PARTS = {"image": "vision", "text": "text"}  # a tower's name -> its Config field


def a_tower(tower: str) -> str:
    """'an image tower' or 'a text tower', as messages name one."""
    return f"{'an' if tower == 'image' else 'a'} {tower} tower"


@dataclass(frozen=True)
class Config:
    """A whole CLIP, or one of its towers alone: `embed_dim` is the width of the shared image-text space
    (a whole CLIP's projections, or a tower's own projection; None for a tower saved without one, such
    as transformers' `CLIPTextModel`). A tower-only config has one part, the other None."""

    embed_dim: int | None
    vision: VisionConfig | None
    text: TextConfig | None

    @property
    def towers(self) -> tuple[str, ...]:
        """The towers it has, in the hub's order: ("image", "text"), ("image",) or ("text",)."""
        return tuple(t for t, part in PARTS.items() if getattr(self, part) is not None)

    @property
    def whole(self) -> bool:
        """Both towers, the projections into one space and a logit scale: a CLIP, not one tower of it."""
        return len(self.towers) == 2

    def parts(self) -> list[tuple[str, object]]:
        """(Config field, part) for each tower it has, e.g. [("vision", VisionConfig(...))]."""
        return [(part, getattr(self, part)) for part in PARTS.values() if getattr(self, part) is not None]

    def only(self, tower: str, projection: bool = True) -> "Config":
        """One tower of this CLIP alone ("image" or "text"), with its projection or without."""
        if tower not in PARTS:
            raise ConfigError(f"unknown tower {tower!r}: use image or text")
        if tower not in self.towers:
            raise ConfigError(f"this model has no {tower} tower; it has {' and '.join(self.towers)}")
        part = getattr(self, PARTS[tower])
        kind = towers.get(PARTS[tower], part.kind).projection_kind
        if projection and (self.embed_dim is None or kind == "none"):
            raise ConfigError(f"this {tower} tower has no projection to keep" + (
                ": its MAP head's output is its embedding" if kind == "none" else ""))
        # SigLIP's text head is part of its tower, kept whether asked for or not
        embed = self.embed_dim if projection or kind == "inside" else None
        return Config(embed, part, None) if tower == "image" else Config(embed, None, part)

    def not_alone(self) -> str | None:
        """Why this tower alone cannot compute alone (a ResNet, a BERT), or None (and for a whole CLIP)."""
        if self.whole:
            return None
        (part, value), = self.parts()
        tower = towers.get(part, value.kind)
        return None if tower.alone else (f"a {tower.label} tower alone: parity computes a ViT image tower or "
                                         "a CLIP or SigLIP text tower alone, or a whole model")

    def missing(self) -> list[str]:
        """The fields that no tensor says and that are still unknown, e.g. ['text.heads']."""
        return [f"{part}.{name}" for part, value in self.parts()
                for name in towers.get(part, value.kind).unknown if getattr(value, name) is None]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def shapes(self) -> "Config":
        """This config less what tensors cannot say: what a state dict's shapes give."""
        def cleared(part, value):
            if value is None:
                return None
            tower = towers.get(part, value.kind)
            return tower.said(replace(value, **dict.fromkeys(tower.unsaid)))
        return Config(self.embed_dim, cleared("vision", self.vision), cleared("text", self.text))

    def filled(self, other: "Config") -> "Config":
        """This config, its unknown fields taken from `other` (which must agree with every known one:
        ConfigError naming the first that does not), and those the tensors say only roughly (SigLIP's
        image size) too."""
        other.check_shapes(self, "this config")
        def tower(part, mine, theirs):
            if mine is None:
                return None
            said = _said(part, theirs, mine)  # theirs as the tensors say it: 384 pixels as 378
            return replace(mine, **{f.name: getattr(theirs, f.name) for f in fields(mine) if getattr(mine, f.name) is None
                                    or getattr(theirs, f.name) is not None and getattr(mine, f.name) == getattr(said, f.name)})
        return Config(self.embed_dim, tower("vision", self.vision, other.vision), tower("text", self.text, other.text))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """From `to_dict`'s form (a JSON object); ConfigError naming what is wrong."""
        try:
            vision, text = data["vision"], data["text"]
            vision, text = (None if vision is None else dict(vision)), (None if text is None else dict(text))
            if vision is not None and isinstance(vision.get("layers"), list):
                vision["layers"] = tuple(vision["layers"])
            config = cls(data["embed_dim"], vision and VisionConfig(**vision), text and TextConfig(**text))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a parity config ({type(e).__name__}: {e}); expected "
                              "{'embed_dim': ..., 'vision': {...}, 'text': {...}}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """ConfigError for a value no CLIP can have (wrong types, sizes under 1, widths not divisible by
        heads, ...), naming the field."""
        if not self.towers:
            raise ConfigError("vision and text are both null: a config has at least one tower")
        if self.whole and self.embed_dim is None:
            raise ConfigError("embed_dim is null: a whole CLIP projects both towers into one space")
        sizes = {"embed_dim": self.embed_dim,
                 **{f"{part}.{f.name}": getattr(value, f.name) for part, value in self.parts() for f in fields(value)}}
        for name, value in sizes.items():
            if value is None and name not in OPTIONAL and name != "embed_dim":
                raise ConfigError(f"{name} is null: every CLIP has one")
            if name.endswith(("kind", "activation", "eps")) or value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(type(x) is int and 0 < x < 1 << 31 for x in values):
                raise ConfigError(f"{name} is {value!r}: a size is a positive integer")
        for part, value in reversed(self.parts()):  # the text tower's own checks first
            towers.get(part, value.kind).check(value)
        towers.family(self)  # both towers of one family
        if problem := self.not_alone():
            raise ConfigError(problem)
        for part, value in self.parts():
            if value.activation is not None and value.activation not in ACTIVATIONS:
                raise ConfigError(f"{part}.activation is {value.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        for part, value in self.parts():
            heads, width = value.heads, towers.get(part, value.kind).attention_width(value)
            if heads is not None and (heads < 1 or width % heads):
                raise ConfigError(f"{part}.heads is {heads}, which does not divide the width {width}")
        for part, value in self.parts():
            if value.eps is not None and (type(value.eps) is not float or not 0 < value.eps < 1):
                raise ConfigError(f"{part}.eps is {value.eps!r}: a LayerNorm eps lies between 0 and 1")

    def check_shapes(self, shapes: "Config", what: str = "the tensors") -> None:
        """ConfigError naming the first field where this config contradicts `shapes` (a shapes-only config)."""
        for tower in ("embed_dim", "vision", "text"):
            mine, theirs = getattr(self, tower), getattr(shapes, tower)
            if tower == "embed_dim":
                if mine != theirs:
                    raise ConfigError(f"the config says embed_dim {mine} but {what} say {theirs}")
                continue
            if (mine is None) != (theirs is None):
                says, have = ("no", "one") if mine is None else ("one", "none")
                raise ConfigError(f"the config says {says} {tower} tower but {what} have {have}")
            if mine is None:
                continue
            ours, others = _said(tower, mine, theirs), _said(tower, theirs, mine)
            for f in fields(mine):
                a, b = getattr(mine, f.name), getattr(theirs, f.name)
                # None: this config leaves it to the other; both compared as the tensors would say them
                if a is not None and b is not None and getattr(ours, f.name) != getattr(others, f.name):
                    raise ConfigError(f"the config says {tower}.{f.name} {a} but {what} say {b}")

    def describe(self) -> str:
        """One line, e.g. 'ViT 12x768/32 mlp 3072 @224 heads 12 quick_gelu eps 1e-05; text 12x512 mlp 2048 ...'."""
        described = [towers.get(part, value.kind).describe(value) for part, value in self.parts()]
        if self.whole:
            return f"{'; '.join(described)}; embed {self.embed_dim}"
        projection = f"projection {self.embed_dim}" if self.embed_dim is not None else "no projection"
        return f"{self.towers[0]} tower only: {described[0]}; {projection}"


def _said(part: str, value, other):
    """A tower part as its tensors would say it (SigLIP's 384 pixels as 378), what it leaves unknown taken
    from `other`."""
    known = replace(value, **{f.name: getattr(other, f.name) for f in fields(value) if getattr(value, f.name) is None})
    return towers.get(part, value.kind).said(known)


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


__all__ = ["ACTIVATIONS", "PARTS", "Config", "ConfigError", "TextConfig", "VisionConfig"]
