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
from ..config import cn_clip as chinese_clip
from .base import Folder, Layout, resnet_unheld
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


def detect(keys) -> bool:
    return "visual_projection.weight" in keys and ("text_model.embeddings.token_embedding.weight" in keys or
                                                   "text_model.embeddings.word_embeddings.weight" in keys)


# ---------------------------------------------------------------- config.json
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def keep_token_ids(made: dict, source: dict | None) -> dict:
    """`made` with the text token ids of `source` (the config.json of a folder of the same layout), where
    it has them: a folder converted to its own layout keeps what its library read (eos 2 or 49407)."""
    theirs = source.get("text_config") if isinstance(source, dict) else None
    if isinstance(theirs, dict) and "text_config" in made:
        made["text_config"].update({k: theirs[k] for k in TOKEN_IDS if k in theirs})
    return made


def config_to_json(config: Config, source: dict | None = None) -> dict:
    """transformers' CLIPConfig for `config`. The text config has the ids of openai's released HF configs
    (bos 0, eos 2, pad 1): with eos 2, transformers pools the text at the highest token id (its legacy
    path), exactly as openai/CLIP does, whatever the input (with 49407, at the first end-of-text token,
    which is the same where the text has one). `source`: the config.json of a folder in this layout that
    the model was read from, whose token ids are kept. A BERT text tower: a ChineseCLIPConfig."""
    return MODELS[config.text.kind][0](config, source)


def _clip_config(config: Config, source: dict | None) -> dict:
    v, t = config.vision, config.text
    return keep_token_ids({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
        "text_config": {"model_type": "clip_text_model", "hidden_size": t.width, "intermediate_size": t.mlp_width,
                        "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
                        "max_position_embeddings": t.context_length, "vocab_size": t.vocab_size,
                        "hidden_act": t.activation, "layer_norm_eps": t.eps, "projection_dim": config.embed_dim,
                        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": v.width, "intermediate_size": v.mlp_width,
                          "num_attention_heads": v.heads, "num_hidden_layers": v.layers, "image_size": v.image_size,
                          "patch_size": v.patch_size, "num_channels": 3, "hidden_act": v.activation,
                          "layer_norm_eps": v.eps, "projection_dim": config.embed_dim},
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
    try:
        t, ti = section(data, "text_config", TEXT)
        v, vi = section(data, "vision_config", VISION)
        text = TextConfig(ti("hidden_size"), ti("num_hidden_layers"), ti("intermediate_size"),
                          ti("max_position_embeddings"), ti("vocab_size"), ti("num_attention_heads"),
                          t["hidden_act"], real(t["layer_norm_eps"], "text_config.layer_norm_eps"))
        vision = VisionConfig("vit", vi("num_hidden_layers"), vi("hidden_size"), vi("image_size"), vi("patch_size"),
                              vi("intermediate_size"), vi("num_attention_heads"), v["hidden_act"],
                              real(v["layer_norm_eps"], "vision_config.layer_norm_eps"))
        if t.get("eos_token_id", 2) not in (2, 49407):
            raise ConfigError(f"text_config.eos_token_id is {t['eos_token_id']!r}: the text pools at another token "
                              "than CLIP's end of text")
        config = Config(integer(data.get("projection_dim", 512), "projection_dim"), vision, text)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"config.json is not a CLIPConfig ({type(e).__name__}: {e})") from None
    config.validate()
    return config


def extra_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    """The tokenizer and image processor files, made from the BPE vocabulary parity ships with; for a
    Chinese-CLIP, BertTokenizer's from its WordPiece vocabulary (`vocab_file`, else cn_clip's)."""
    return MODELS[config.text.kind][1](config, vocab_file)


def _clip_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    from ..text.bpe import hf_tokenizer_files

    v = config.vision
    processor = {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": v.image_size}, "resample": 3,  # bicubic, as CLIP's
        "do_center_crop": True, "crop_size": {"height": v.image_size, "width": v.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    files = {name: data for name, data in hf_tokenizer_files(config.text.context_length).items()}
    files["preprocessor_config.json"] = json.dumps(processor, indent=2).encode()
    return files


def _chinese_clip_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    return {**chinese_clip.tokenizer_files(config, vocab_file, "BertTokenizer"),
            "preprocessor_config.json": chinese_clip.processor_file(config)}


# text tower kind -> transformers' model of it: (its config.json, its tokenizer and processor files)
MODELS = {"clip": (_clip_config, _clip_files),
          "bert": (lambda config, source: chinese_clip.config_to_json(config), _chinese_clip_files)}


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="folder", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit",), "bert": ("vit",)}, unheld=resnet_unheld(NAME, NO_RESNET),
                folder=Folder(WEIGHTS, config_to_json, config_from_json, extra_files=extra_files))
