"""Framework-neutral CLIP configurations: the nine OpenAI releases, name lookup, and shape inference."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Mapping, Sequence

from .errors import ParityError


class ConfigError(ParityError):
    """A state dict or a name that does not describe a known CLIP layout."""


@dataclass(frozen=True)
class CLIPConfig:
    """Every hyper-parameter of a CLIP model (openai/CLIP `build_model`'s arguments), plus release facts."""

    embed_dim: int
    image_resolution: int
    vision_layers: tuple[int, int, int, int] | int  # a tuple: ModifiedResNet stage depths; an int: ViT depth
    vision_width: int
    vision_patch_size: int | None  # None for ResNets
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    context_length: int = 77
    vocab_size: int = 49408
    name: str | None = None  # registry name, None for a shape that matches no release
    sha256: str | None = None  # SHA-256 of the official release file (openai/CLIP `_MODELS`)
    filename: str | None = None  # the release file's name

    @property
    def is_vit(self) -> bool:
        return not isinstance(self.vision_layers, tuple)

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64

    def architecture(self) -> tuple:
        """The fields that decide the model's tensors (not its name or release facts)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("name", "sha256", "filename"))


def _rn(name, embed, res, layers, width, text_width, sha):
    return CLIPConfig(embed, res, layers, width, None, text_width, text_width // 64, 12,
                      name=name, sha256=sha, filename=f"{name}.pt")


def _vit(name, embed, res, layers, width, patch, text_width, sha, filename):
    return CLIPConfig(embed, res, layers, width, patch, text_width, text_width // 64, 12,
                      name=name, sha256=sha, filename=filename)


VARIANTS: dict[str, CLIPConfig] = {c.name: c for c in (
    _rn("RN50", 1024, 224, (3, 4, 6, 3), 64, 512,
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    _rn("RN101", 512, 224, (3, 4, 23, 3), 64, 512,
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"),
    _rn("RN50x4", 640, 288, (4, 6, 10, 6), 80, 640,
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"),
    _rn("RN50x16", 768, 384, (6, 8, 18, 8), 96, 768,
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"),
    _rn("RN50x64", 1024, 448, (3, 15, 36, 10), 128, 1024,
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"),
    _vit("ViT-B/32", 512, 224, 12, 768, 32, 512,
         "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    _vit("ViT-B/16", 512, 224, 12, 768, 16, 512,
         "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    _vit("ViT-L/14", 768, 224, 24, 1024, 14, 768,
         "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    _vit("ViT-L/14@336px", 768, 336, 24, 1024, 14, 768,
         "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
)}

# The reference table: the canonical logit (image ones/2, text ones) of the official weights, as the
# published Paddle port of CLIP reported it for both frameworks, to 4 decimals. Checked only for files whose
# SHA-256 is the release's own; never shown beside synthetic weights.
REFERENCE_LOGITS: dict[str, float] = {"RN50": 18.1140, "RN50x4": 29.5482, "RN101": 33.5211, "ViT-B/32": 27.5936}


def _alias(name: str) -> str:
    # "ViT-L/14@336px" -> "vit-l-14-336px"
    return re.sub(r"[/@_ ]", "-", name.strip()).lower()


_ALIASES = {_alias(n): n for n in VARIANTS}
_ALIASES["vit-l-14-336"] = "ViT-L/14@336px"


def get_config(name: str) -> CLIPConfig:
    """Look a variant up by any accepted spelling: `ViT-B/32`, `ViT-B-32`, `vit-b-32`.

    >>> get_config("vit-l-14-336").name
    'ViT-L/14@336px'
    """
    try:
        return VARIANTS[_ALIASES[_alias(name)]]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def match_variant(config: CLIPConfig) -> CLIPConfig:
    """The registry entry with the same architecture, or `config` unchanged (name None) when none has it."""
    for known in VARIANTS.values():
        if known.architecture() == config.architecture():
            return known
    return replace(config, name=None, sha256=None, filename=None)


def detect_layout(keys: Sequence[str]) -> str:
    """'torch' (official names) or 'paddle' (parity's Paddle names), decided by the keys that differ."""
    keys = list(keys)
    torch_marks = [k for k in keys if k.endswith(("in_proj_weight", "running_mean"))]
    paddle_marks = [k for k in keys if k.endswith(("attn.q_proj.weight", "._mean"))
                    and not k.startswith("visual.attnpool.")]
    if torch_marks and not paddle_marks:
        return "torch"
    if paddle_marks and not torch_marks:
        return "paddle"
    if torch_marks and paddle_marks:
        raise ConfigError(f"keys mix both layouts (e.g. {torch_marks[0]!r} and {paddle_marks[0]!r})")
    raise ConfigError("not a CLIP state dict: no attention or normalisation keys of either layout")


def _shape(state_dict: Mapping, key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ConfigError(f"not a CLIP state dict: missing {key!r}") from None


def _count(keys, prefix: str) -> int:
    # number of distinct integer indices right after `prefix`
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def _grid(n_positions: int, what: str) -> int:
    grid = round((n_positions - 1) ** 0.5)
    if grid * grid + 1 != n_positions:
        raise ConfigError(f"{what} has {n_positions} rows, not grid**2 + 1")
    return grid


def infer_config(state_dict: Mapping) -> CLIPConfig:
    """Read every hyper-parameter from tensor shapes (either layout), and name the matching release.

    Works on anything with `.shape` per key: torch or paddle tensors, numpy arrays, safetensors slices.
    """
    keys = list(state_dict)
    detect_layout(keys)
    if "visual.proj" in state_dict:
        width, _, patch, _ = _shape(state_dict, "visual.conv1.weight")  # [width, 3, patch, patch]
        grid = _grid(_shape(state_dict, "visual.positional_embedding")[0], "visual.positional_embedding")
        vision_layers: tuple | int = _count(keys, "visual.transformer.resblocks.")
        resolution = patch * grid
    else:
        vision_layers = tuple(_count(keys, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        width = _shape(state_dict, "visual.layer1.0.conv1.weight")[0]
        patch = None
        grid = _grid(_shape(state_dict, "visual.attnpool.positional_embedding")[0],
                     "visual.attnpool.positional_embedding")
        resolution = grid * 32  # the ResNet downsamples by 32
    text_width = _shape(state_dict, "token_embedding.weight")[1]  # [vocab, width]
    config = CLIPConfig(
        embed_dim=_shape(state_dict, "text_projection")[1],
        image_resolution=resolution,
        vision_layers=vision_layers,
        vision_width=width,
        vision_patch_size=patch,
        transformer_width=text_width,
        transformer_heads=text_width // 64,
        transformer_layers=_count(keys, "transformer.resblocks."),
        context_length=_shape(state_dict, "positional_embedding")[0],
        vocab_size=_shape(state_dict, "token_embedding.weight")[0],
    )
    return match_variant(config)
