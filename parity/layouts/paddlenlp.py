"""PaddleNLP's `CLIPModel`, and its `ChineseCLIPModel` for a BERT text tower: a folder of `config.json` and
`model_state.pdparams` (also read: sharded indexes), with parity's record in `parity.json` beside them. ViT
and ResNet; a ViT only beside a BERT.

The towers are `vision_model.*` / `text_model.*`; transformer blocks are Paddle's
`nn.TransformerEncoderLayer` (`self_attn.{q,k,v,out}_proj`, `linear1`/`linear2`, `norm1`/`norm2`), Linear
weights are [in, out], positional embeddings are `nn.Embedding` (`.weight`), the projections are
parameters [W, E], `logit_scale` has shape [1]. Its LayerNorms use Paddle's default eps (1e-5) whatever
the config says, so only configs with eps 1e-5 can be written. `ChineseCLIPModel` holds the same image
tower and a PaddleNLP `BertModel` (`text_model.embeddings.*`, and `nn.TransformerEncoderLayer`s as above
under `text_model.encoder.layers`), whose LayerNorms do take the config's eps.
"""
from __future__ import annotations

from ..config.schema import Config, ConfigError, VisionConfig, integer, section
from ..config import cn_clip as chinese_clip
from . import hf
from .openai import ARCHIVE_ENTRIES
from .base import Folder, Layout
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "paddlenlp", "paddle"
FILES = "folder: config.json + model_state.pdparams (read too: shards), parity.json"
WEIGHTS = "model_state.pdparams"
EPS = 1e-5  # nn.LayerNorm's and nn.TransformerEncoderLayer's default, which PaddleNLP's CLIP always uses


def _blocks(hub: str, layout: str) -> tuple[Row, ...]:
    return (
        Row(f"{hub}.{{i}}.attn.in_proj_weight", f"{layout}.{{i}}.self_attn.{{qkv}}_proj.weight", "split_qkv_linear"),
        Row(f"{hub}.{{i}}.attn.in_proj_bias", f"{layout}.{{i}}.self_attn.{{qkv}}_proj.bias", "split_qkv"),
        Row(f"{hub}.{{i}}.attn.out_proj.weight", f"{layout}.{{i}}.self_attn.out_proj.weight", "linear"),
        Row(f"{hub}.{{i}}.attn.out_proj.bias", f"{layout}.{{i}}.self_attn.out_proj.bias"),
        Row(f"{hub}.{{i}}.ln_1.{{x}}", f"{layout}.{{i}}.norm1.{{x}}"),
        Row(f"{hub}.{{i}}.ln_2.{{x}}", f"{layout}.{{i}}.norm2.{{x}}"),
        Row(f"{hub}.{{i}}.mlp.c_fc.weight", f"{layout}.{{i}}.linear1.weight", "linear"),
        Row(f"{hub}.{{i}}.mlp.c_fc.bias", f"{layout}.{{i}}.linear1.bias"),
        Row(f"{hub}.{{i}}.mlp.c_proj.weight", f"{layout}.{{i}}.linear2.weight", "linear"),
        Row(f"{hub}.{{i}}.mlp.c_proj.bias", f"{layout}.{{i}}.linear2.bias"),
    )


def _bert(hub: str, layout: str) -> tuple[Row, ...]:
    # cn_clip's BERT layers as Paddle's nn.TransformerEncoderLayer (post-LayerNorm): Linears [in, out]
    linears = (("attention.self.query", "self_attn.q_proj"), ("attention.self.key", "self_attn.k_proj"),
               ("attention.self.value", "self_attn.v_proj"), ("attention.output.dense", "self_attn.out_proj"),
               ("intermediate.dense", "linear1"), ("output.dense", "linear2"))
    return (*(row for theirs, ours in linears for row in (
                Row(f"{hub}.{{i}}.{theirs}.weight", f"{layout}.{{i}}.{ours}.weight", "linear"),
                Row(f"{hub}.{{i}}.{theirs}.bias", f"{layout}.{{i}}.{ours}.bias"))),
            Row(f"{hub}.{{i}}.attention.output.LayerNorm.{{x}}", f"{layout}.{{i}}.norm1.{{x}}"),
            Row(f"{hub}.{{i}}.output.LayerNorm.{{x}}", f"{layout}.{{i}}.norm2.{{x}}"))


ROWS = (
    *_blocks("visual.transformer.resblocks", "vision_model.transformer.layers"),
    *_blocks("transformer.resblocks", "text_model.transformer.layers"),
    Row("visual.positional_embedding", "vision_model.positional_embedding.weight"),
    Row("visual.attnpool.positional_embedding", "vision_model.attnpool.positional_embedding.weight"),
    Row("visual.attnpool.{x}_proj.weight", "vision_model.attnpool.{x}_proj.weight", "linear"),
    Row("visual.{p}.running_mean", "vision_model.{p}._mean"),
    Row("visual.{p}.running_var", "vision_model.{p}._variance"),
    Row("visual.{p}.num_batches_tracked", None),
    *(Row(name, None) for name in ARCHIVE_ENTRIES),
    Row("visual.proj", "vision_projection"),
    Row("visual.{p}", "vision_model.{p}"),  # the rest of the image tower: its own names
    Row("token_embedding.weight", "text_model.token_embedding.weight"),
    Row("positional_embedding", "text_model.positional_embedding.weight"),
    Row("ln_final.{x}", "text_model.ln_final.{x}"),
    Row("logit_scale", "logit_scale", "scalar"),
    Row("text_projection", "text_projection"),
    *_bert("bert.encoder.layer", "text_model.encoder.layers"),
    Row("bert.embeddings.LayerNorm.{x}", "text_model.embeddings.layer_norm.{x}"),
    Row("bert.embeddings.{p}", "text_model.embeddings.{p}"),  # word, position, token_type embeddings
)
KEYMAP = KeyMap(ROWS)


def detect(keys) -> bool:
    clip = "text_model.token_embedding.weight" in keys and "text_model.ln_final.weight" in keys
    vision_alone = "vision_model.class_embedding" in keys and not any(k.startswith("text_model.") for k in keys)
    return clip or vision_alone or ("text_model.embeddings.word_embeddings.weight" in keys and "vision_projection" in keys)


# ---------------------------------------------------------------- config.json
def config_to_json(config: Config, source: dict | None = None) -> dict:
    """PaddleNLP's CLIPConfig for `config` (text ids as in hf.py: eos 2 pools at the highest id, as openai does;
    `source`, a PaddleNLP folder's config.json the model was read from, keeps its own)."""
    return MODELS[config.text.kind if config.text else "clip"][0](config, source)


def _chinese_clip_config(config: Config, source: dict | None = None) -> dict:
    if config.vision.eps != EPS:
        raise ConfigError(f"PaddleNLP's ChineseCLIP computes its image tower's LayerNorms with eps {EPS}, "
                          f"whatever its config says; this model's vision.eps is {config.vision.eps}")
    return chinese_clip.config_to_json(config, dtype_key="dtype")


def _clip_config(config: Config, source: dict | None = None) -> dict:
    v, t = config.vision, config.text
    for name, part in config.parts():
        if part.eps is not None and part.eps != EPS:
            raise ConfigError(f"PaddleNLP's CLIP computes LayerNorm with eps {EPS}, whatever its config says; "
                              f"this model's {name}.eps is {part.eps}, so the paddlenlp layout cannot hold it")
    if not config.whole:
        return hf.tower_json(config, source, "dtype", EPS)
    vision = {"model_type": "clip_vision_model", "hidden_size": v.width, "image_size": v.image_size,
              "num_attention_heads": v.heads, "num_channels": 3, "layer_norm_eps": EPS}
    if v.kind == "vit":
        vision.update({"num_hidden_layers": v.layers, "intermediate_size": v.mlp_width, "patch_size": v.patch_size,
                       "hidden_act": v.activation})
    else:
        vision["num_hidden_layers"] = list(v.layers)  # a list: PaddleNLP builds openai's ModifiedResNet
    return hf.keep_token_ids({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "dtype": "float32",
        "text_config": {"model_type": "clip_text_model", "hidden_size": t.width, "intermediate_size": t.mlp_width,
                        "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
                        "max_position_embeddings": t.context_length, "vocab_size": t.vocab_size,
                        "hidden_act": t.activation, "layer_norm_eps": EPS, "projection_dim": config.embed_dim,
                        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        "vision_config": vision,
    }, source)


TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "eos_token_id": 49407}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}


def config_from_json(data: dict) -> Config:
    """The Config that PaddleNLP builds from this config.json (its defaults where a key is absent; eps is
    always 1e-5, as its model computes; a ChineseCLIPConfig's BERT takes its own)."""
    if chinese_clip.is_chinese_clip(data):
        return chinese_clip.config_from_json(data, vision_eps=EPS)
    try:
        alone = hf.tower_from_json(data, TEXT, VISION, EPS)
        if alone is not None:
            alone.validate()
            return alone
        v, vi = section(data, "vision_config", VISION)
        text = hf.text_part(data, TEXT, EPS)
        if isinstance(v["num_hidden_layers"], (list, tuple)):
            width = vi("hidden_size")
            layers = tuple(integer(n, "vision_config.num_hidden_layers") for n in v["num_hidden_layers"])
            # PaddleNLP's own rule where the config names no head count: width * 32 / 64
            heads = vi("num_attention_heads") if v.get("num_attention_heads") is not None else width * 32 // 64
            vision = VisionConfig("resnet", layers, width, vi("image_size"), heads=heads)
        else:
            vision = VisionConfig("vit", vi("num_hidden_layers"), vi("hidden_size"), vi("image_size"), vi("patch_size"),
                                  vi("intermediate_size"), vi("num_attention_heads"), v["hidden_act"], EPS)
        config = Config(integer(data.get("projection_dim", 512), "projection_dim"), vision, text)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"config.json is not a PaddleNLP CLIPConfig ({type(e).__name__}: {e})") from None
    config.validate()
    return config


def extra_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    """For a Chinese-CLIP, what `ChineseCLIPTokenizer` and `ChineseCLIPProcessor.from_pretrained` read."""
    return MODELS[config.text.kind if config.text else "clip"][1](config, vocab_file)


def _chinese_clip_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    return {**chinese_clip.tokenizer_files(config, vocab_file, "ChineseCLIPTokenizer"),
            "preprocessor_config.json": chinese_clip.processor_file(config)}


# text tower kind -> PaddleNLP's model of it: (its config.json, its tokenizer and processor files)
MODELS = {"clip": (_clip_config, lambda config, vocab_file=None: {}),
          "bert": (_chinese_clip_config, _chinese_clip_files)}


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="folder", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit", "resnet"), "bert": ("vit",)},  # ChineseCLIPModel's image tower is a ViT
                folder=Folder(WEIGHTS, config_to_json, config_from_json, extra_files=extra_files),
                alone=("image", "text"))
