"""open_clip's CLIP (PyPI `open-clip-torch`): openai/CLIP's key names exactly, so its tensors are the hub's;
what this module adds is open_clip's file convention and its config, which the tensors do not carry.

A Hugging Face hub folder of open_clip holds `open_clip_config.json` (`model_cfg`: open_clip's model
config; `preprocess_cfg`) beside `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`; a single
file is a plain state dict, whose config is given by name (`ViT-H-14`). open_clip models that are not
openai's CLIP (LayerScale, CLIPA, CoCa, timm or Hugging Face towers, attentional pooling, ...) are
refused by the config key that makes them so, and by their telltale keys (`refusal`). Its SigLIP (a timm
trunk, a custom text tower) is this layout's SigLIP family: `open_clip_siglip.py`.
"""
from __future__ import annotations

from ..config.schema import Config, ConfigError, TextConfig, VisionConfig, integer, real
from .openai import ARCHIVE_ENTRIES
from . import open_clip_siglip as siglip
from .base import Folder, Layout, resnet_unheld, siglip_keys
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "open_clip", "torch"
FILES = "folder: open_clip_config.json + open_clip_model.safetensors (read too: open_clip_pytorch_model.bin)"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
NO_RESNET = "parity registers open_clip's ViT CLIPs only; give a ResNet as an openai-layout file"
# openai's key names; the release archives' int entries are not in open_clip's state dicts
KEYMAP = KeyMap((*(Row(name, None) for name in ARCHIVE_ENTRIES), Row("{p}", "{p}")))


def detect(keys) -> bool:
    # its CLIP's keys are the hub's (an open_clip file is known by its folder, or read as openai); its
    # SigLIP's are its own
    return siglip.keys(keys)


# open_clip 3.3.0's CLIPVisionCfg / CLIPTextCfg defaults for what parity computes: each key that changes
# the computation must have this value (None: absent); keys that only train or only add outputs are free
VISION = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
COMMON_FIXED = {"ls_init_value": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                "scale_attn": False, "scale_fc": False, "final_ln_after_pool": False}
VISION_FIXED = {**COMMON_FIXED, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                "pool_type": "tok", "timm_model_name": None}
TEXT_FIXED = {**COMMON_FIXED, "hf_tokenizer_name": None, "tokenizer_mode": None, "embed_cls": False,
              "no_causal_mask": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
              "hf_model_name": None}
VISION_FREE = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
               "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
TEXT_FREE = {"output_tokens", "pad_id", "eos_id", "tokenizer_kwargs", "hf_model_pretrained", "hf_proj_type",
             "hf_pooler_type"}
MODEL_FIXED = {"init_logit_bias": None, "custom_text": False, "multimodal_cfg": None, "nonscalar_logit_scale": False}
MODEL_FREE = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale", "output_dict"}
WHAT = {"ls_init_value": "LayerScale (ls_1/ls_2.gamma)", "init_logit_bias": "SigLIP's sigmoid loss (logit_bias)",
        "multimodal_cfg": "CoCa's text decoder", "custom_text": "a custom text tower (text.* keys)",
        "timm_model_name": "a timm image tower", "hf_model_name": "a Hugging Face text tower",
        "hf_tokenizer_name": "another tokenizer", "no_ln_pre": "CLIPA's tower", "attentional_pool": "an attention pooler"}


def _section(data: dict, name: str, fixed: dict, free: set, sizes: dict) -> tuple[dict, callable]:
    part = data.get(name, {})
    if not isinstance(part, dict):
        raise ConfigError(f"{name} is not a JSON object")
    for key, value in part.items():
        if key in fixed:
            if value != fixed[key] and not (fixed[key] is None and value in (None, {})):
                raise ConfigError(f"{name}.{key} is {value!r}: {WHAT.get(key, 'a model other than CLIP')}; parity "
                                  f"computes open_clip's plain CLIP, whose {key} is {fixed[key]!r}")
        elif key not in free and key not in sizes:
            raise ConfigError(f"{name}.{key}: a key parity does not know, so it cannot tell what it computes")
    values = {**sizes, **part}
    return values, lambda key: integer(values[key], f"{name}.{key}")


def _mlp(width: int, ratio, where: str) -> int:
    value = width * real(ratio, f"{where}.mlp_ratio")
    if not 1 <= value < 1 << 31:
        raise ConfigError(f"{where}.mlp_ratio {ratio!r} gives an MLP width of {value:g}")
    return int(value)


def config_from_model_cfg(cfg: dict) -> Config:
    """The Config that open_clip builds from a model config (`model_cfg`, or a model_configs/NAME.json)."""
    if not isinstance(cfg, dict):
        raise ConfigError("model_cfg is not a JSON object")
    if siglip.is_siglip(cfg):
        return siglip.config_from_model_cfg(cfg)
    for key, value in cfg.items():
        if key in MODEL_FIXED and value not in (MODEL_FIXED[key], None, {}):
            raise ConfigError(f"model_cfg.{key} is {value!r}: {WHAT.get(key, 'not a CLIP')}, a model parity does not "
                              "compute")
        if key not in MODEL_FIXED and key not in MODEL_FREE:
            raise ConfigError(f"model_cfg.{key}: a key parity does not know, so it cannot tell what it computes")
    v, vi = _section(cfg, "vision_cfg", VISION_FIXED, VISION_FREE, VISION)
    t, ti = _section(cfg, "text_cfg", TEXT_FIXED, TEXT_FREE, TEXT)
    if type(cfg.get("quick_gelu", False)) is not bool:
        raise ConfigError(f"model_cfg.quick_gelu is {cfg['quick_gelu']!r}, not true or false")
    activation = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"
    width, text_width = vi("width"), ti("width")
    for name, value in (("vision_cfg.width", width), ("text_cfg.width", text_width)):
        if value < 1:
            raise ConfigError(f"{name} is {value}: a size is a positive integer")
    head_width = vi("head_width")
    if head_width < 1 or width % head_width:
        raise ConfigError(f"vision_cfg.head_width {head_width} does not divide the width {width}")
    # open_clip: heads = width // head_width, mlp_width = int(width * mlp_ratio)
    vision = VisionConfig("vit", vi("layers"), width, vi("image_size"), vi("patch_size"),
                          _mlp(width, v["mlp_ratio"], "vision_cfg"), width // head_width, activation, 1e-5)
    text = TextConfig(text_width, ti("layers"), _mlp(text_width, t["mlp_ratio"], "text_cfg"),
                      ti("context_length"), ti("vocab_size"), ti("heads"), activation, 1e-5)
    if "embed_dim" not in cfg:
        raise ConfigError("model_cfg has no embed_dim")
    config = Config(integer(cfg["embed_dim"], "model_cfg.embed_dim"), vision, text)
    config.validate()
    return config


def config_from_json(data: dict) -> Config:
    """The Config of a hub folder's open_clip_config.json."""
    if not isinstance(data.get("model_cfg"), dict):
        raise ConfigError(f"{CONFIG_FILE} has no model_cfg object")
    try:
        return config_from_model_cfg(data["model_cfg"])
    except ConfigError as e:
        raise ConfigError(f"{CONFIG_FILE}: {e}") from None


def config_to_json(config: Config, source: dict | None = None) -> dict:
    """open_clip_config.json for `config`: open_clip's own model config, and CLIP's preprocessing (`source`,
    a folder's own file, adds nothing: open_clip's config holds no more than the Config says)."""
    if config.text.kind == "siglip_text":
        return siglip.config_to_json(config, source)
    v, t = config.vision, config.text
    if v.eps != 1e-5 or t.eps != 1e-5 or v.activation != t.activation or v.width % v.heads:
        raise ConfigError(f"open_clip's config has no place for this model ({config.describe()}): it fixes "
                          "LayerNorm eps at 1e-5 and one activation for both towers")
    model = {"embed_dim": config.embed_dim,
             "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                            "head_width": v.width // v.heads, "mlp_ratio": v.mlp_width / v.width,
                            "patch_size": v.patch_size},
             "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                          "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_width / t.width}}
    if v.activation == "quick_gelu":
        model["quick_gelu"] = True
    if config_from_model_cfg(model) != config:  # a ratio that int(width * ratio) does not give back
        raise ConfigError(f"open_clip's mlp_ratio cannot state the MLP widths {v.mlp_width} and {t.mlp_width}")
    return {"model_cfg": model, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}


# telltale keys of open_clip models that share CLIP's names but are other models
TELLTALES = (
    (".ls_1.gamma", "LayerScale blocks (ls_1/ls_2.gamma, e.g. ViT-M-16-alt)"),
    ("text_decoder.", "CoCa (a text decoder)"),
    ("logit_bias", "SigLIP (a sigmoid loss with logit_bias)"),
    ("visual.trunk.", "a timm image tower (e.g. SigLIP, ConvNeXt)"),
    ("visual.attn_pool.", "an attention pooler (CoCa)"),
    ("text.", "a custom or Hugging Face text tower (text.*)"),
)


def extra_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    """A SigLIP's tokenizer files (open_clip reads a hub folder's with transformers' AutoTokenizer); CLIP's
    tokenizer is built into open_clip."""
    from ..config.siglip import processor_files

    return processor_files(config, vocab_file) if config.text is not None and config.text.kind == "siglip_text" else {}


def refusal(keys) -> str | None:
    """What open_clip model other than CLIP a key set is, or None."""
    keys = set(keys)
    if siglip_keys(keys):  # SigLIP under transformers' names (hf, paddle): parity computes it
        return None
    if siglip.keys(keys):  # open_clip's SigLIP: parity computes it with its text head
        return None if "text.text_projection.weight" in keys else (
            "open_clip's SigLIP without a text head (proj_type none, e.g. ViT-SO400M-16-SigLIP-i18n-256), not a "
            "model parity computes")
    for telltale, what in TELLTALES:
        if any(telltale in k if telltale.startswith(".") else k.startswith(telltale) for k in keys):
            return f"open_clip's {what}, not a CLIP that parity computes"
    if "visual.proj" in keys and "visual.ln_pre.weight" not in keys and "visual.transformer.resblocks.0.ln_1.weight" in keys:
        return "a ViT without ln_pre (open_clip's CLIPA), not a CLIP that parity computes"
    return None


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="folder", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit",), "siglip_text": ("siglip_vit",)}, unheld=resnet_unheld(NAME, NO_RESNET),
                foreign=refusal, families={"siglip": siglip.KEYMAP},
                folder=Folder(WEIGHTS, config_to_json, config_from_json, config_file=CONFIG_FILE,
                              extra_files=extra_files))
