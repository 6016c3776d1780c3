"""Named CLIP models and their release facts: the config of each, and where they are known, the release
file's name, its SHA-256 and the reference table's logit. OpenAI's nine releases are the first entries,
then open_clip's CLIP architectures under open_clip's own names (`ViT-H-14`, `ViT-B-32-quickgelu`, ...).

A checkpoint gets its config from here only by an exact match of everything its tensors say, and only
when every entry that matches has the same config: OpenAI's ViT-B/32 and open_clip's ViT-B-32 have the
same tensors and differ in activation, so such shapes name no config (a file whose SHA-256 is a release's
is still that release). A file is "official" only when its SHA-256 is the release's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .schema import Config, ConfigError, TextConfig, VisionConfig


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # who publishes it: "openai", "open_clip", "cn_clip"
    config: Config
    filename: str | None = None  # the release file's name
    sha256: str | None = None  # the release file's SHA-256 (openai/CLIP `_MODELS`)
    reference_logit: float | None = None  # the canonical logit of the official weights, to 4 decimals


def _openai_text(width: int) -> TextConfig:
    return TextConfig(width=width, layers=12, mlp_width=4 * width, context_length=77, vocab_size=49408,
                      heads=width // 64, activation="quick_gelu", eps=1e-5)


def _rn(name, embed, res, layers, width, text_width, sha, logit=None):
    vision = VisionConfig("resnet", layers, width, res, heads=width * 32 // 64)
    return Entry(name, "openai", Config(embed, vision, _openai_text(text_width)), f"{name}.pt", sha, logit)


def _vit(name, embed, res, layers, width, patch, text_width, sha, filename, logit=None):
    vision = VisionConfig("vit", layers, width, res, patch, 4 * width, width // 64, "quick_gelu", 1e-5)
    return Entry(name, "openai", Config(embed, vision, _openai_text(text_width)), filename, sha, logit)


# open_clip 3.3.0's model configs (src/open_clip/model_configs/NAME.json), as they state them: vision
# (layers, width, patch, head_width, mlp_ratio), text (width, heads, layers); every one at 224 pixels, a
# 77-token context, LayerNorm eps 1e-5 and GELU, or QuickGELU where the name ends in -quickgelu (its
# config sets "quick_gelu": true). open_clip makes the MLP width int(width * mlp_ratio).
OPEN_CLIP = (
    ("ViT-B-32", 512, (12, 768, 32, 64, 4.0), (512, 8, 12)),
    ("ViT-B-16", 512, (12, 768, 16, 64, 4.0), (512, 8, 12)),
    ("ViT-L-14", 768, (24, 1024, 14, 64, 4.0), (768, 12, 12)),
    ("ViT-H-14", 1024, (32, 1280, 14, 80, 4.0), (1024, 16, 24)),
    ("ViT-g-14", 1024, (40, 1408, 14, 88, 4.3637), (1024, 16, 24)),
    ("ViT-bigG-14", 1280, (48, 1664, 14, 104, 4.9231), (1280, 20, 32)),
)
QUICKGELU_FORMS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-bigG-14")  # open_clip has no ViT-g-14-quickgelu


def _open_clip(name, embed, vision, text, activation) -> Entry:
    layers, width, patch, head_width, mlp_ratio = vision
    text_width, text_heads, text_layers = text
    v = VisionConfig("vit", layers, width, 224, patch, int(width * mlp_ratio), width // head_width, activation, 1e-5)
    t = TextConfig(text_width, text_layers, 4 * text_width, 77, 49408, text_heads, activation, 1e-5)
    return Entry(name, "open_clip", Config(embed, v, t))


# Chinese-CLIP (cn_clip 1.6.0's clip/model_configs, paired as its _MODEL_INFO pairs them): openai's
# image towers with QuickGELU (ViT-H-14 with 80-wide heads), and a Chinese BERT: RoBERTa-wwm-ext-base or
# -large, or RBT3 for RN50. What no tensor says: BERT's GELU and eps 1e-12, the 52-token context.
_BERTS = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096), "rbt3": (768, 3, 12, 3072)}


def _cn_clip(name, embed, vision: VisionConfig, bert: str) -> Entry:
    width, layers, heads, mlp = _BERTS[bert]
    text = TextConfig(width, layers, mlp, 52, 21128, heads, "gelu", 1e-12, kind="bert", positions=512, types=2)
    return Entry(f"cn_clip/{name}", "cn_clip", Config(embed, vision, text))


def _cn_vit(layers, width, patch, resolution=224, head_width=64):
    return VisionConfig("vit", layers, width, resolution, patch, 4 * width, width // head_width, "quick_gelu", 1e-5)


# Towers alone, as diffusion pipelines and VLMs ship them (transformers' config.json of each release):
# SD 1.x's text_encoder is openai's ViT-L/14 text tower (CLIPTextModel); SD 2.x's is open_clip ViT-H's,
# GELU, saved with 23 of its 24 layers (the pipeline conditions on the penultimate layer); SDXL's
# text_encoder_2 is bigG's text tower with its projection (CLIPTextModelWithProjection, eos id 2); LLaVA's
# vision tower is openai's ViT-L/14-336 image tower without its projection (CLIPVisionModel).
def _text_alone(name, width, layers, heads, activation, embed=None) -> Entry:
    text = TextConfig(width, layers, 4 * width, 77, 49408, heads, activation, 1e-5)
    return Entry(name, "towers", Config(embed, None, text))


TOWERS = (
    _text_alone("sd1/text_encoder", 768, 12, 12, "quick_gelu"),
    _text_alone("sd2/text_encoder", 1024, 23, 16, "gelu"),
    _text_alone("sdxl/text_encoder_2", 1280, 32, 20, "gelu", embed=1280),
    Entry("llava/vision_tower", "towers",
          Config(None, VisionConfig("vit", 24, 1024, 336, 14, 4096, 16, "quick_gelu", 1e-5), None)),
)

# SigLIP, by its Hugging Face names (google/NAME), loaded as transformers' SiglipModel: transformers'
# convert_siglip_to_hf.py (its get_siglip_config: base is SiglipConfig()'s defaults, 768 wide, 12 layers and
# heads, MLP 3072; large 1024/24/16/4096; so400m 1152/27/16/4304; patch 16 or 14; vocabulary 32000, 250000
# for -multilingual; so400m at 224 pixels has a 16-token context), checked against open_clip's
# model_configs (ViT-*-SigLIP*.json) and timm's vit_*_siglip_* widths. Every one: gelu_pytorch_tanh and
# LayerNorm eps 1e-6 in both towers (SiglipConfig's defaults), a 64-token context, the text head projecting
# to the image width. SigLIP2 at a fixed resolution loads as SiglipModel too (transformers' siglip2 docs:
# "FixRes ... backwards compatible with SigLIP"), with Gemma's 256000-token vocabulary.
_SIGLIP = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096), "so400m": (1152, 27, 16, 4304)}


def _siglip(name, size, patch, resolution, vocab=32000, context=64) -> Entry:
    width, layers, heads, mlp = _SIGLIP[size]
    vision = VisionConfig("siglip_vit", layers, width, resolution, patch, mlp, heads, "gelu_tanh", 1e-6)
    text = TextConfig(width, layers, mlp, context, vocab, heads, "gelu_tanh", 1e-6, kind="siglip_text")
    return Entry(name, "siglip", Config(width, vision, text))


SIGLIP = (
    *(_siglip(f"siglip-base-patch16-{r}", "base", 16, r) for r in (224, 256, 384, 512)),
    _siglip("siglip-base-patch16-256-multilingual", "base", 16, 256, vocab=250000),
    *(_siglip(f"siglip-large-patch16-{r}", "large", 16, r) for r in (256, 384)),
    _siglip("siglip-so400m-patch14-224", "so400m", 14, 224, context=16),
    _siglip("siglip-so400m-patch14-384", "so400m", 14, 384),  # 27 x 27 patches: the last 6 pixels dropped
    _siglip("siglip2-base-patch16-224", "base", 16, 224, vocab=256000),
    _siglip("siglip2-so400m-patch14-384", "so400m", 14, 384, vocab=256000),
    _siglip("siglip2-so400m-patch16-384", "so400m", 16, 384, vocab=256000),
)

# The reference logits: the canonical logit (image ones/2, text ones) of the official weights, as the
# published Paddle port of CLIP reported it for both frameworks, to 4 decimals. Checked only for files
# whose SHA-256 is the release's own; never shown beside synthetic weights.
ENTRIES: dict[str, Entry] = {e.name: e for e in (
    _rn("RN50", 1024, 224, (3, 4, 6, 3), 64, 512,
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", 18.1140),
    _rn("RN101", 512, 224, (3, 4, 23, 3), 64, 512,
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", 33.5211),
    _rn("RN50x4", 640, 288, (4, 6, 10, 6), 80, 640,
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", 29.5482),
    _rn("RN50x16", 768, 384, (6, 8, 18, 8), 96, 768,
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"),
    _rn("RN50x64", 1024, 448, (3, 15, 36, 10), 128, 1024,
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"),
    _vit("ViT-B/32", 512, 224, 12, 768, 32, 512,
         "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt", 27.5936),
    _vit("ViT-B/16", 512, 224, 12, 768, 16, 512,
         "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    _vit("ViT-L/14", 768, 224, 24, 1024, 14, 768,
         "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    _vit("ViT-L/14@336px", 768, 336, 24, 1024, 14, 768,
         "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
    *(_open_clip(*row, "gelu") for row in OPEN_CLIP),
    *(_open_clip(f"{row[0]}-quickgelu", *row[1:], "quick_gelu") for row in OPEN_CLIP if row[0] in QUICKGELU_FORMS),
    _cn_clip("ViT-B-16", 512, _cn_vit(12, 768, 16), "base"),
    _cn_clip("ViT-L-14", 768, _cn_vit(24, 1024, 14), "base"),
    _cn_clip("ViT-L-14-336", 768, _cn_vit(24, 1024, 14, 336), "base"),
    _cn_clip("ViT-H-14", 1024, _cn_vit(32, 1280, 14, head_width=80), "large"),
    _cn_clip("RN50", 1024, VisionConfig("resnet", (3, 4, 6, 3), 64, 224, heads=32), "rbt3"),
    *TOWERS,
    *SIGLIP,
)}
FAMILIES = tuple(dict.fromkeys(e.family for e in ENTRIES.values()))
FAMILY_NOTES = {"openai": "openai/CLIP's releases, known by their SHA-256",
                "open_clip": "open_clip's configs by its own names; LAION's weights use GELU, -quickgelu QuickGELU",
                "cn_clip": "Chinese-CLIP: openai's image towers, a Chinese BERT text tower (text w/h/l/mlp: the BERT's)",
                "towers": "one tower alone, as diffusion pipelines (text encoders) and VLMs (vision towers) ship it",
                "siglip": "SigLIP and fixed-resolution SigLIP2 (google/NAME on the Hub), as transformers' SiglipModel"}


def _alias(name: str) -> str:
    # "ViT-L/14@336px" -> "vit-l-14-336px"
    return re.sub(r"[/@_ ]", "-", name.strip()).lower()


def get(name: str) -> Entry:
    """An entry by its name in any case (`ViT-B/32` is OpenAI's, `ViT-B-32` open_clip's GELU model), or
    by a spelling that names one entry only (`vit-l-14@336px`, `RN50X4`).

    >>> get("vit-l-14-336px").name
    'ViT-L/14@336px'
    """
    exact = [n for n in ENTRIES if n.lower() == name.strip().lower()]
    found = exact or [n for n in ENTRIES if _alias(n) == _alias(name)]
    if len(found) == 1:
        return ENTRIES[found[0]]
    if found:
        raise ConfigError(f"{name!r} may name {' or '.join(found)}; give the name exactly")
    raise ConfigError(f"unknown model {name!r}; known: {', '.join(ENTRIES)}")


def family(name: str) -> list[Entry]:
    """The entries of one family ("openai", "open_clip"), in order."""
    return [e for e in ENTRIES.values() if e.family == name]


def by_shapes(shapes: Config) -> list[Entry]:
    """The entries whose tensors have exactly these shapes (everything a state dict says)."""
    return [e for e in ENTRIES.values() if e.config.shapes() == shapes]


def config_by_shapes(shapes: Config, family: str | None = None) -> tuple[Entry | None, list[Entry]]:
    """(the entry these shapes name, or None; every entry they fit, of `family` if given). Shapes name an
    entry when every entry that fits them has the same config (ViT-B/32 and ViT-B-32-quickgelu do): the
    first is named."""
    matches = [e for e in by_shapes(shapes) if family in (None, e.family)]
    return (matches[0] if len({e.config for e in matches}) == 1 else None), matches


def by_sha256(sha256: str | None) -> Entry | None:
    return next((e for e in ENTRIES.values() if sha256 and e.sha256 == sha256), None)


def name_of(config: Config) -> str | None:
    """The entry whose config this is, exactly, or None."""
    return next((e.name for e in ENTRIES.values() if e.config == config), None)
