"""The layout contract: what every layout says, typed, with its defaults in one place.

Each layout module ends with `LAYOUT = Layout(...)`; `parity.layouts.LAYOUTS` lists them. A layout is its
key map (rows to and from the hub), a detector over the key set, the tower kinds it has places for, its
file convention, and what its library fixes (a config rule, a wrapper around the tensors, a folder with a
config file). Nothing reads a layout by attribute name with a fallback: every field is here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import towers
from ..config.schema import Config, ConfigError, a_tower
from .keymap import KeyMap


def nothing(*_args) -> None:
    return None


@dataclass(frozen=True)
class Fixed:
    """A library that takes no config saying heads, activation or eps, and builds every CLIP by one rule."""

    library: str  # e.g. "PASSL's CLIP"
    rule: Callable[[Any], Any]  # shapes-only Config -> the complete Config that library builds
    text: str  # the rule in words, e.g. "QuickGELU, 64-wide heads, ..."


@dataclass(frozen=True)
class Folder:
    """A `from_pretrained` folder: a config file its library reads, a weights file, and other files."""

    weights: str  # e.g. "model.safetensors"
    config_to_json: Callable[..., dict]  # (Config, the source folder's config file or None) -> its config file
    config_from_json: Callable[[dict], Any]  # a parsed config file -> Config (ConfigError where it cannot)
    config_file: str = "config.json"
    extra_files: Callable[..., dict] = lambda config, vocab_file=None: {}  # tokenizer, processor files


@dataclass(frozen=True)
class Layout:
    name: str
    framework: str  # "torch" or "paddle": whose loader reads it, and the dtype a Paddle layout is written in
    files: str  # its file convention, in words (`parity layouts`)
    format: str  # what it is written as by default: "pt", "pdparams" or "folder"
    keymap: KeyMap  # its rows for CLIP's towers (CLIP's and BERT's text towers beside openai's image towers)
    detect: Callable[[set], bool]  # whether a key set is in this layout
    # text tower kind -> the image tower kinds it has places for beside it (its first text kind: the CLIP one)
    holds: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"clip": ("vit", "resnet")})
    unheld: Callable[[set], str | None] = nothing  # keys -> why a file detected as this layout cannot be one
    foreign: Callable[[set], str | None] = nothing  # keys -> a model its library makes that parity does not compute
    fixed: Fixed | None = None
    wrap: tuple[str, str] | None = None  # a .pdparams file's tensors under this key, each name behind this prefix
    folder: Folder | None = None
    alone: tuple[str, ...] = ()  # the towers it also holds alone, without the other ("image", "text")
    families: Mapping[str, KeyMap] = field(default_factory=dict)  # its rows for another family's towers ("siglip")

    def rows_for(self, what) -> KeyMap:
        """The key map that reads `what`: a Config (by its towers' family), or a key set in this layout (by
        the family whose towers' telltale keys its rows find there). One map per family, because one name
        can mean two things: SigLIP's hub key `vision_model.encoder.layers.0.self_attn.q_proj.weight` is
        the name of a third of CLIP's fused attention in the hf layout."""
        family = towers.family(what) if isinstance(what, Config) else self.family_of(what)
        if family == "clip":
            return self.keymap
        if family not in self.families:
            raise ConfigError(f"the {self.name} layout has no place for {family}'s towers")
        return self.families[family]

    def family_of(self, keys) -> str:
        """The tower family of a key set in this layout ("clip" where no other family's rows find one)."""
        for family, keymap in self.families.items():
            hub = {keymap.hub_key(k) for k in keys}
            if any(t.telltale in hub for part in towers.REGISTRY.values() for t in part.values() if t.family == family):
                return family
        return "clip"

    @property
    def image_kinds(self) -> tuple[str, ...]:
        """Every image tower kind it holds beside some text tower, in order."""
        return tuple(dict.fromkeys(k for kinds in self.holds.values() for k in kinds))

    def holds_config(self, config) -> bool:
        """Whether it has a place for this CLIP's towers."""
        if not config.whole:
            return self.refuses(config) is None
        return config.vision.kind in self.holds.get(config.text.kind, ())

    def refuses(self, config, model: str | None = None) -> str | None:
        """Why a CLIP of `config` (named `model`, else described) cannot be written in this layout, or None."""
        if not config.whole:
            return self._refuses_alone(config)
        text = towers.text(config)
        if config.text.kind not in self.holds:
            where = ", ".join(n for n, layout in LAYOUTS.items() if layout.holds_config(config))
            held = " and ".join(towers.called(towers.get("text", k)) for k in self.holds)
            return f"the {self.name} layout holds {held}, not {towers.called(text)}: write {where or 'another layout'}"
        kinds = self.holds[config.text.kind]
        if config.vision.kind not in kinds:
            beside = "" if config.text.kind == next(iter(self.holds)) else f" beside a {text.label}"
            return f"the {self.name} layout holds {' and '.join(kinds)} image towers{beside}, not a {config.vision.kind}"
        if self.fixed is not None and config.complete and self.fixed.rule(config.shapes()) != config:
            return (f"{self.fixed.library} builds every CLIP with {self.fixed.text}, and this model "
                    f"({model or config.describe()}) differs: a {self.name} file would load there and compute something else; "
                    "write a layout whose config file says it (paddle, paddlenlp, hf)")
        return None

    def _refuses_alone(self, config) -> str | None:
        (tower,) = config.towers
        if tower not in self.alone:
            return (f"the {self.name} layout holds whole CLIPs, not {a_tower(tower)} alone: write it as openai, "
                    "paddle, hf or paddlenlp")
        (part, value), = config.parts()
        if problem := config.not_alone():
            return problem
        if value.kind not in (*self.holds, *self.image_kinds):
            return f"the {self.name} layout has no place for a {towers.get(part, value.kind).label} tower"
        return None


LAYOUTS: dict[str, Layout] = {}  # parity.layouts fills it: every layout, by name


def siglip_keys(keys) -> bool:
    """Whether a key set holds SigLIP's towers under transformers' names (hf's, and Paddle's with its MAP
    head's q, k, v apart): its text head or its image tower's MAP probe."""
    return "text_model.head.weight" in keys or "vision_model.head.probe" in keys


def resnet_unheld(layout: str, why: str) -> Callable[[set], str | None]:
    """A layout without a ResNet image tower: a file with a ResNet's stage keys is refused, saying why."""
    return lambda keys: f"a ResNet in the {layout} layout: {why}" if any(".layer1." in k for k in keys) else None
