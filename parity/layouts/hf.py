"""Hugging Face transformers' `CLIPModel`, and its `ChineseCLIPModel` for a BERT text tower: a folder of
`config.json`, `model.safetensors` (also read: `pytorch_model.bin` and sharded indexes), and the tokenizer
and image processor files that `CLIPProcessor` / `ChineseCLIPProcessor.from_pretrained` read offline. ViT
only: transformers has no ResNet CLIP.

The towers are `vision_model.*` / `text_model.*`, with separate q/k/v projections, `mlp.fc1`/`fc2`,
`layer_norm1`/`2`, the library's own spelling `pre_layrnorm`, and the projections as Linear weights:
`visual_projection.weight` is the hub's `visual.proj` transposed. `ChineseCLIPModel` holds the same image
tower, and Chinese-CLIP's BERT under `text_model.*` with cn_clip's own names (`bert.*` renamed).
"""
from __future__ import annotations

import json

from ..config.schema import Config, ConfigError, TextConfig, VisionConfig, integer, real, section
from ..config import cn_clip as chinese_clip, siglip
from .base import Folder, Layout, resnet_unheld, siglip_keys
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "hf", "torch"
FILES = "folder: config.json + model.safetensors (read too: pytorch_model.bin, shards), tokenizer and processor files"
WEIGHTS = "model.safetensors"
NO_RESNET = "transformers' CLIPModel has no ResNet image tower"


def _blocks(hub: str, layout: str) -> tuple[Row, ...]:
    # one tower's transformer blocks: torch Linears on both sides, so no transposes
    return (
        Row(f"{hub}.{{i}}.attn.in_proj_weight", f"{layout}.{{i}}.self_attn.{{qkv}}_proj.weight", "split_qkv"),
        Row(f"{hub}.{{i}}.attn.in_proj_bias", f"{layout}.{{i}}.self_attn.{{qkv}}_proj.bias", "split_qkv"),
        Row(f"{hub}.{{i}}.attn.out_proj.{{x}}", f"{layout}.{{i}}.self_attn.out_proj.{{x}}"),
        Row(f"{hub}.{{i}}.ln_1.{{x}}", f"{layout}.{{i}}.layer_norm1.{{x}}"),
        Row(f"{hub}.{{i}}.ln_2.{{x}}", f"{layout}.{{i}}.layer_norm2.{{x}}"),
        Row(f"{hub}.{{i}}.mlp.c_fc.{{x}}", f"{layout}.{{i}}.mlp.fc1.{{x}}"),
        Row(f"{hub}.{{i}}.mlp.c_proj.{{x}}", f"{layout}.{{i}}.mlp.fc2.{{x}}"),
    )


ROWS = (
    Row("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    Row("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    Row("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    Row("visual.ln_pre.{x}", "vision_model.pre_layrnorm.{x}"),
    *_blocks("visual.transformer.resblocks", "vision_model.encoder.layers"),
    Row("visual.ln_post.{x}", "vision_model.post_layernorm.{x}"),
    Row("visual.proj", "visual_projection.weight", "linear"),  # [W, E] -> Linear [E, W]
    Row("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    Row("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    *_blocks("transformer.resblocks", "text_model.encoder.layers"),
    Row("ln_final.{x}", "text_model.final_layer_norm.{x}"),
    Row("text_projection", "text_projection.weight", "linear"),
    *(Row(name, None) for name in ("input_resolution", "context_length", "vocab_size")),
    Row("logit_scale", "logit_scale"),
    Row("bert.{p}", "text_model.{p}"),  # ChineseCLIPModel's BERT: cn_clip's names under text_model (last: a catch-all)
)
KEYMAP = KeyMap(ROWS)
SIGLIP = KeyMap((Row("{p}", "{p}"),))  # SiglipModel's names are the hub's for SigLIP


def detect(keys) -> bool:
    if siglip_keys(keys):  # SiglipModel, SiglipTextModel, SiglipVisionModel: the MAP head's attention fused
        return "vision_model.head.attention.q_proj.weight" not in keys
    text = "text_model.embeddings.token_embedding.weight" in keys
    if "visual_projection.weight" in keys and (text or "text_model.embeddings.word_embeddings.weight" in keys):
        return True
    # a tower alone: CLIPTextModel(WithProjection), CLIPVisionModel(WithProjection)
    vision = "vision_model.embeddings.patch_embedding.weight" in keys
    return text != vision and not any(k.startswith("vision_model." if text else "text_model.") for k in keys)


# ---------------------------------------------------------------- config.json
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def keep_token_ids(made: dict, source: dict | None) -> dict:
    """`made` with the text token ids of `source` (the config.json of a folder of the same layout), where
    it has them: a folder converted to its own layout keeps what its library read (eos 2 or 49407). A
    text tower alone has them at the top level."""
    def text_of(data):
        if not isinstance(data, dict):
            return None
        return data if data.get("model_type") == MODEL_TYPES["text"] else data.get("text_config")
    theirs, ours = text_of(source), text_of(made)
    if isinstance(theirs, dict) and ours is not None:
        ours.update({k: theirs[k] for k in TOKEN_IDS if k in theirs})
    return made


# (tower, with a projection) -> transformers' and PaddleNLP's class of a tower alone
ARCHITECTURES = {("text", False): "CLIPTextModel", ("text", True): "CLIPTextModelWithProjection",
                 ("image", False): "CLIPVisionModel", ("image", True): "CLIPVisionModelWithProjection"}
MODEL_TYPES = {"text": "clip_text_model", "image": "clip_vision_model"}


def text_json(t: TextConfig, embed_dim: int | None, eps: float | None = None) -> dict:
    """A CLIPTextConfig's keys (text ids as openai's released configs have them: see `config_to_json`)."""
    made = {"model_type": MODEL_TYPES["text"], "hidden_size": t.width, "intermediate_size": t.mlp_width,
            "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
            "max_position_embeddings": t.context_length, "vocab_size": t.vocab_size,
            "hidden_act": t.activation, "layer_norm_eps": eps or t.eps, "projection_dim": embed_dim,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    return made if embed_dim is not None else {k: v for k, v in made.items() if k != "projection_dim"}


def vision_json(v: VisionConfig, embed_dim: int | None, eps: float | None = None) -> dict:
    """A CLIPVisionConfig's keys for a ViT."""
    made = {"model_type": MODEL_TYPES["image"], "hidden_size": v.width, "intermediate_size": v.mlp_width,
            "num_attention_heads": v.heads, "num_hidden_layers": v.layers, "image_size": v.image_size,
            "patch_size": v.patch_size, "num_channels": 3, "hidden_act": v.activation,
            "layer_norm_eps": eps or v.eps, "projection_dim": embed_dim}
    return made if embed_dim is not None else {k: v for k, v in made.items() if k != "projection_dim"}


def tower_json(config: Config, source: dict | None, dtype_key: str, eps: float | None = None) -> dict:
    """The config.json of one tower alone (CLIPTextModel, ..., CLIPVisionModelWithProjection)."""
    (tower,) = config.towers
    part = text_json(config.text, config.embed_dim, eps) if tower == "text" else vision_json(config.vision, config.embed_dim, eps)
    made = {"architectures": [ARCHITECTURES[tower, config.embed_dim is not None]], **part, dtype_key: "float32"}
    return keep_token_ids(made, source)


def tower_from_json(data: dict, text_defaults: dict, vision_defaults: dict, eps: float | None = None) -> Config | None:
    """The Config of a tower alone's config.json (model_type clip_text_model or clip_vision_model), or
    None for a whole CLIP's; whether it has its projection, its `architectures` says."""
    tower = {model_type: tower for tower, model_type in MODEL_TYPES.items()}.get(data.get("model_type"))
    if tower is None:
        return None
    names = data.get("architectures")
    known = {name: key for key, name in ARCHITECTURES.items() if key[0] == tower}
    if not isinstance(names, list) or len(names) != 1 or names[0] not in known:
        raise ConfigError(f"config.json's architectures is {names!r}: a {data['model_type']} is one of "
                          f"{', '.join(known)}, which says whether it has its projection")
    projection = known[names[0]][1]
    wrapped = {"text_config" if tower == "text" else "vision_config": data}
    part = text_part(wrapped, text_defaults, eps) if tower == "text" else vision_part(wrapped, vision_defaults, eps)
    embed = integer(data.get("projection_dim", 512), "projection_dim") if projection else None
    return Config(embed, part, None) if tower == "image" else Config(embed, None, part)


def config_to_json(config: Config, source: dict | None = None) -> dict:
    """transformers' CLIPConfig for `config`. The text config has the ids of openai's released HF configs
    (bos 0, eos 2, pad 1): with eos 2, transformers pools the text at the highest token id (its legacy
    path), exactly as openai/CLIP does, whatever the input (with 49407, at the first end-of-text token,
    which is the same where the text has one). `source`: the config.json of a folder in this layout that
    the model was read from, whose token ids are kept. A BERT text tower: a ChineseCLIPConfig."""
    return MODELS[_model(config)][0](config, source)


def _clip_config(config: Config, source: dict | None) -> dict:
    if not config.whole:
        return tower_json(config, source, "torch_dtype")
    return keep_token_ids({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
        "text_config": text_json(config.text, config.embed_dim),
        "vision_config": vision_json(config.vision, config.embed_dim),
    }, source)


# transformers' own defaults (CLIPTextConfig(), CLIPVisionConfig()), for keys a config.json leaves out
TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "eos_token_id": 49407}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def config_from_json(data: dict) -> Config:
    """The Config that transformers builds from this config.json (its defaults where a key is absent)."""
    if chinese_clip.is_chinese_clip(data):
        return chinese_clip.config_from_json(data)
    if siglip.is_siglip(data):
        return siglip.config_from_json(data)
    try:
        config = tower_from_json(data, TEXT, VISION) or Config(
            integer(data.get("projection_dim", 512), "projection_dim"), vision_part(data, VISION),
            text_part(data, TEXT))
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"config.json is not a CLIPConfig ({type(e).__name__}: {e})") from None
    config.validate()
    return config


def text_part(data: dict, defaults: dict, eps: float | None = None) -> TextConfig:
    """The text tower of a CLIPConfig's `text_config` over the library's `defaults` (`eps`: the one its
    model computes with, whatever the file says)."""
    t, ti = section(data, "text_config", defaults)
    if t.get("eos_token_id", 2) not in (2, 49407):
        raise ConfigError(f"text_config.eos_token_id is {t['eos_token_id']!r}: the text pools at another token "
                          "than CLIP's end of text")
    return TextConfig(ti("hidden_size"), ti("num_hidden_layers"), ti("intermediate_size"),
                      ti("max_position_embeddings"), ti("vocab_size"), ti("num_attention_heads"), t["hidden_act"],
                      eps or real(t["layer_norm_eps"], "text_config.layer_norm_eps"))


def vision_part(data: dict, defaults: dict, eps: float | None = None) -> VisionConfig:
    """The ViT image tower of a CLIPConfig's `vision_config`, likewise."""
    v, vi = section(data, "vision_config", defaults)
    return VisionConfig("vit", vi("num_hidden_layers"), vi("hidden_size"), vi("image_size"), vi("patch_size"),
                        vi("intermediate_size"), vi("num_attention_heads"), v["hidden_act"],
                        eps or real(v["layer_norm_eps"], "vision_config.layer_norm_eps"))


def extra_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    """The tokenizer and image processor files, made from the BPE vocabulary parity ships with; for a
    Chinese-CLIP, BertTokenizer's from its WordPiece vocabulary (`vocab_file`, else cn_clip's)."""
    return MODELS[_model(config)][1](config, vocab_file)


def _model(config: Config) -> str:
    # the text tower's kind names transformers' model; an image tower alone, its family's text tower
    return config.text.kind if config.text else {"vit": "clip", "siglip_vit": "siglip_text"}[config.vision.kind]


def _clip_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    from ..text.bpe import hf_tokenizer_files

    files = hf_tokenizer_files(config.text.context_length) if config.text is not None else {}
    v = config.vision
    if v is None:  # a text tower alone: its tokenizer's files
        return files
    processor = {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": v.image_size}, "resample": 3,  # bicubic, as CLIP's
        "do_center_crop": True, "crop_size": {"height": v.image_size, "width": v.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    files["preprocessor_config.json"] = json.dumps(processor, indent=2).encode()
    return files


def _chinese_clip_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    return {**chinese_clip.tokenizer_files(config, vocab_file, "BertTokenizer"),
            "preprocessor_config.json": chinese_clip.processor_file(config)}


# text tower kind -> transformers' model of it: (its config.json, its tokenizer and processor files)
MODELS = {"clip": (_clip_config, _clip_files),
          "bert": (lambda config, source: chinese_clip.config_to_json(config), _chinese_clip_files),
          "siglip_text": (siglip.config_to_json, siglip.processor_files)}


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="folder", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit",), "bert": ("vit",), "siglip_text": ("siglip_vit",)},
                unheld=resnet_unheld(NAME, NO_RESNET),
                folder=Folder(WEIGHTS, config_to_json, config_from_json, extra_files=extra_files),
                alone=("image", "text"), families={"siglip": SIGLIP})
