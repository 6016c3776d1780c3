"""open_clip's SigLIP (`CustomTextCLIP`: a timm image trunk under `visual.trunk.*`, open_clip's text tower under
`text.*`): its rows to and from the SigLIP hub (transformers' names), and its `open_clip_config.json`. Part of
the open_clip layout, as its SigLIP family; not a layout of its own.

What open_clip's model config does not say, timm's model name does: the trunk's width, depth, heads, patch,
resolution and activation come from `timm_model_name` (timm 1.0's `vit_*_siglip_*` functions). open_clip's
SigLIP-1 trunks and text towers compute GELU exactly (erf), as transformers' converted SigLIP-1 configs do
not (tanh): each tower's activation is whatever open_clip computes, so a folder converted to transformers'
layout says it per tower and computes what open_clip computes.
"""
from __future__ import annotations

from ..config.schema import Config, ConfigError, TextConfig, VisionConfig, integer, real
from .keymap import KeyMap, Row

V, T = "vision_model", "text_model"
ROWS = (
    Row(f"{V}.embeddings.patch_embedding.{{x}}", "visual.trunk.patch_embed.proj.{x}"),
    Row(f"{V}.embeddings.position_embedding.weight", "visual.trunk.pos_embed", "batch"),  # [N, D] <-> [1, N, D]
    *(Row(f"{V}.encoder.layers.{{i}}.layer_norm{n}.{{x}}", f"visual.trunk.blocks.{{i}}.norm{n}.{{x}}") for n in (1, 2)),
    # timm's fused qkv [3D, D] is transformers' q, k, v projections, in that order
    Row(f"{V}.encoder.layers.{{i}}.self_attn.{{qkv}}_proj.{{x}}", "visual.trunk.blocks.{i}.attn.qkv.{x}", "split_qkv"),
    Row(f"{V}.encoder.layers.{{i}}.self_attn.out_proj.{{x}}", "visual.trunk.blocks.{i}.attn.proj.{x}"),
    Row(f"{V}.encoder.layers.{{i}}.mlp.{{p}}", "visual.trunk.blocks.{i}.mlp.{p}"),
    Row(f"{V}.post_layernorm.{{x}}", "visual.trunk.norm.{x}"),
    Row(f"{V}.head.probe", "visual.trunk.attn_pool.latent"),
    # the MAP head: torch's in_proj [3D, ...] is timm's q [D, ...] and kv [2D, ...] (k, v in that order)
    Row(f"{V}.head.attention.in_proj_{{x}}", "visual.trunk.attn_pool.{qkv}.{x}", "split_q_kv"),
    Row(f"{V}.head.attention.out_proj.{{x}}", "visual.trunk.attn_pool.proj.{x}"),
    Row(f"{V}.head.layernorm.{{x}}", "visual.trunk.attn_pool.norm.{x}"),
    Row(f"{V}.head.mlp.{{p}}", "visual.trunk.attn_pool.mlp.{p}"),
    Row(f"{T}.embeddings.token_embedding.weight", "text.token_embedding.weight"),
    Row(f"{T}.embeddings.position_embedding.weight", "text.positional_embedding"),
    *(Row(f"{T}.encoder.layers.{{i}}.layer_norm{n}.{{x}}", f"text.transformer.resblocks.{{i}}.ln_{n}.{{x}}") for n in (1, 2)),
    Row(f"{T}.encoder.layers.{{i}}.self_attn.{{qkv}}_proj.{{x}}", "text.transformer.resblocks.{i}.attn.in_proj_{x}",
        "split_qkv"),
    Row(f"{T}.encoder.layers.{{i}}.self_attn.out_proj.{{x}}", "text.transformer.resblocks.{i}.attn.out_proj.{x}"),
    Row(f"{T}.encoder.layers.{{i}}.mlp.fc1.{{x}}", "text.transformer.resblocks.{i}.mlp.c_fc.{x}"),
    Row(f"{T}.encoder.layers.{{i}}.mlp.fc2.{{x}}", "text.transformer.resblocks.{i}.mlp.c_proj.{x}"),
    Row(f"{T}.final_layer_norm.{{x}}", "text.ln_final.{x}"),
    Row(f"{T}.head.{{x}}", "text.text_projection.{x}"),
    Row("logit_{x}", "logit_{x}", "unscalar"),  # [1] in the hub, 0-d in open_clip
)
KEYMAP = KeyMap(ROWS)


def keys(keys) -> bool:
    """Whether a key set is open_clip's SigLIP: a timm trunk with an attention pool, and a logit bias."""
    return "visual.trunk.attn_pool.latent" in keys and "logit_bias" in keys and "text.token_embedding.weight" in keys


# timm 1.0.31's SigLIP trunks (models/vision_transformer.py, vit_*_siglip_*): size -> width, depth, heads,
# mlp_ratio; every one without a class token, pooled by a MAP head, LayerNorm eps 1e-6, erf GELU but
# where its function sets act_layer='gelu_tanh' (TANH)
SIZES = {"base": (768, 12, 12, 4.0), "large": (1024, 24, 16, 4.0), "so400m": (1152, 27, 16, 3.7362),
         "giantopt": (1536, 40, 16, 4.0)}
TRUNKS = {**{f"vit_base_patch16_siglip_{r}": ("base", 16, r) for r in (224, 256, 384, 512)},
          "vit_base_patch32_siglip_256": ("base", 32, 256),
          **{f"vit_large_patch16_siglip_{r}": ("large", 16, r) for r in (256, 384, 512)},
          **{f"vit_so400m_patch14_siglip_{r}": ("so400m", 14, r) for r in (224, 378, 384)},
          **{f"vit_so400m_patch16_siglip_{r}": ("so400m", 16, r) for r in (256, 384, 512)},
          **{f"vit_giantopt_patch16_siglip_{r}": ("giantopt", 16, r) for r in (256, 384)}}
TANH = {"vit_base_patch32_siglip_256", "vit_large_patch16_siglip_512", "vit_so400m_patch16_siglip_256",
        "vit_so400m_patch16_siglip_384", "vit_so400m_patch16_siglip_512", "vit_giantopt_patch16_siglip_256",
        "vit_giantopt_patch16_siglip_384"}
EPS = 1e-6  # timm's ViT LayerNorm
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}
# model_cfg keys and values that make open_clip's SigLIP (anything else changes what it computes)
MODEL = {"custom_text": True}
VISION = {"timm_pool": "map", "timm_proj": "none"}
TEXT = {"no_causal_mask": True, "pool_type": "last", "proj_bias": True}
FREE = {"model": {"embed_dim", "init_logit_bias", "init_logit_scale", "vision_cfg", "text_cfg", "custom_text",
                  "quick_gelu", "cast_dtype", "output_dict", "nonscalar_logit_scale"},
        "vision_cfg": {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
                       "timm_proj_bias", "timm_drop", "timm_drop_path", "patch_dropout", "output_tokens"},
        "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "no_causal_mask",
                     "pool_type", "proj_bias", "proj_type", "norm_kwargs", "act_kwargs", "hf_tokenizer_name",
                     "tokenizer_kwargs", "tokenizer_mode", "output_tokens", "pad_id", "eos_id"}}


def is_siglip(cfg: dict) -> bool:
    """Whether an open_clip model config is a SigLIP: a timm trunk pooled by its MAP head, a custom text tower."""
    vision = cfg.get("vision_cfg") if isinstance(cfg.get("vision_cfg"), dict) else {}
    return cfg.get("custom_text") is True and vision.get("timm_pool") == "map" and "init_logit_bias" in cfg


def _checked(cfg: dict, where: str, fixed: dict) -> dict:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} is not a JSON object")
    for key, value in cfg.items():
        if key not in FREE[where]:
            raise ConfigError(f"{where}.{key}: a key parity does not know in a SigLIP, so it cannot tell what it computes")
        if key in fixed and value != fixed[key]:
            raise ConfigError(f"{where}.{key} is {value!r}: open_clip's SigLIP has {fixed[key]!r}")
    return cfg


def config_from_model_cfg(cfg: dict) -> Config:
    """The Config open_clip builds from a SigLIP model config. A trunk that timm's name does not tell
    parity leaves the image tower's heads and activation unknown (give a config)."""
    _checked(cfg, "model", MODEL)
    v, t = _checked(cfg.get("vision_cfg", {}), "vision_cfg", VISION), _checked(cfg.get("text_cfg", {}), "text_cfg", TEXT)
    if cfg.get("nonscalar_logit_scale"):
        raise ConfigError("model_cfg.nonscalar_logit_scale is set: parity reads open_clip's 0-d logit scale and bias")
    if t.get("proj_type", "linear") != "linear":
        raise ConfigError(f"text_cfg.proj_type is {t['proj_type']!r}: a SigLIP text tower without its head "
                          "(transformers writes an identity head for it), which parity does not compute")
    name = v.get("timm_model_name")
    if name in TRUNKS:
        size, patch, resolution = TRUNKS[name]
        width, layers, heads, ratio = SIZES[size]
        vision = VisionConfig("siglip_vit", layers, width, resolution, patch, int(width * ratio), heads,
                              "gelu_tanh" if name in TANH else "gelu", EPS)
    else:  # a trunk timm's name does not tell parity: the tensors say its sizes, and its heads stay unknown
        vision = VisionConfig("siglip_vit", None, None, integer(v.get("image_size", 224), "vision_cfg.image_size"),
                              activation=None, eps=EPS)
    act = t.get("act_kwargs") or {}
    if act not in ({}, {"approximate": "tanh"}):
        raise ConfigError(f"text_cfg.act_kwargs is {act!r}: parity computes GELU, exact or tanh")
    eps = real((t.get("norm_kwargs") or {}).get("eps", 1e-5), "text_cfg.norm_kwargs.eps")
    width = integer(t.get("width", 512), "text_cfg.width")
    text = TextConfig(width, integer(t.get("layers", 12), "text_cfg.layers"),
                      int(width * real(t.get("mlp_ratio", 4.0), "text_cfg.mlp_ratio")),
                      integer(t.get("context_length", 77), "text_cfg.context_length"),
                      integer(t.get("vocab_size", 49408), "text_cfg.vocab_size"), integer(t.get("heads", 8), "text_cfg.heads"),
                      "gelu_tanh" if act else "gelu", eps, kind="siglip_text")
    return Config(integer(cfg.get("embed_dim"), "model_cfg.embed_dim"), vision, text)


def config_to_json(config: Config, source: dict | None = None) -> dict:
    """open_clip_config.json for a SigLIP: its trunk by timm's name, its text tower, SigLIP's preprocessing."""
    v, t = config.vision, config.text
    trunk = next((name for name, (size, patch, r) in TRUNKS.items()
                  if (SIZES[size][:3], patch, r) == ((v.width, v.layers, v.heads), v.patch_size, v.image_size)
                  and int(v.width * SIZES[size][3]) == v.mlp_width), None)
    act = "gelu_tanh" if trunk in TANH else "gelu"
    if trunk is None or v.eps != EPS or act != v.activation:
        why = (f"timm's {trunk} computes {act} (eps {EPS}), where this model's image tower computes {v.activation} "
               f"(eps {v.eps})" if trunk else "no timm SigLIP trunk has this image tower's sizes")
        raise ConfigError(f"open_clip builds SigLIP's image tower by a timm model name, and {why}: an open_clip "
                          "folder would compute something else")
    if t.activation not in ("gelu", "gelu_tanh"):
        raise ConfigError(f"open_clip's SigLIP text tower computes GELU, not {t.activation}")
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "mlp_ratio": t.mlp_width / t.width, "no_causal_mask": True, "pool_type": "last",
            "proj_bias": True, "norm_kwargs": {"eps": t.eps}, "tokenizer_kwargs": {"clean": "canonicalize"}}
    if t.activation == "gelu_tanh":
        text["act_kwargs"] = {"approximate": "tanh"}
    theirs = ((source or {}).get("model_cfg") or {}).get("text_cfg") or {}
    if isinstance(theirs, dict) and isinstance(theirs.get("hf_tokenizer_name"), str):
        text["hf_tokenizer_name"] = theirs["hf_tokenizer_name"]  # where open_clip finds its tokenizer
    model = {"embed_dim": config.embed_dim, "init_logit_bias": -10, "custom_text": True,
             "vision_cfg": {"image_size": v.image_size, "timm_model_name": trunk, "timm_model_pretrained": False,
                            "timm_pool": "map", "timm_proj": "none"}, "text_cfg": text}
    if config_from_model_cfg(model) != config:  # a ratio that int(width * ratio) does not give back
        raise ConfigError(f"open_clip's mlp_ratio cannot state the text MLP width {t.mlp_width}")
    return {"model_cfg": model, "preprocess_cfg": dict(PREPROCESS)}
