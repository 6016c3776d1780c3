"""`ChineseCLIPConfig` as transformers and PaddleNLP both write it (one schema, the same defaults), and the
tokenizer files their `ChineseCLIPProcessor`s read: shared by the hf and paddlenlp layouts, which hold
Chinese-CLIP's BERT text tower beside their CLIP one. Not a layout itself.

A BERT's context (52 for Chinese-CLIP) is the tokenizer's length, in no tensor and in no model config:
it is written as the tokenizer's `model_max_length`, and read back from parity's record, the registry
or the user (`checkpoint.resolve_config`).
"""
from __future__ import annotations

import json

from .schema import Config, ConfigError, TextConfig, VisionConfig, integer, real, section

MODEL_TYPE = "chinese_clip"
# both libraries' defaults (ChineseCLIPTextConfig(), ChineseCLIPVisionConfig()), for keys a file leaves out
TEXT = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute"}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def is_chinese_clip(data: dict) -> bool:
    return data.get("model_type") == MODEL_TYPE


def config_to_json(config: Config, architecture: str = "ChineseCLIPModel", dtype_key: str = "torch_dtype") -> dict:
    """The ChineseCLIPConfig of a Chinese-CLIP `config` (a ViT and a BERT)."""
    v, t = config.vision, config.text
    return {
        "architectures": [architecture], "model_type": MODEL_TYPE, "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, dtype_key: "float32",
        "text_config": {"model_type": "chinese_clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.width,
                        "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                        "intermediate_size": t.mlp_width, "hidden_act": t.activation,
                        "max_position_embeddings": t.positions, "type_vocab_size": t.types,
                        "layer_norm_eps": t.eps, "pad_token_id": 0, "position_embedding_type": "absolute"},
        "vision_config": {"model_type": "chinese_clip_vision_model", "hidden_size": v.width,
                          "intermediate_size": v.mlp_width, "num_hidden_layers": v.layers,
                          "num_attention_heads": v.heads, "num_channels": 3, "image_size": v.image_size,
                          "patch_size": v.patch_size, "hidden_act": v.activation, "layer_norm_eps": v.eps,
                          "projection_dim": config.embed_dim},
    }


def config_from_json(data: dict, vision_eps: float | None = None) -> Config:
    """The Config that a ChineseCLIPConfig builds, less the context (None: no model config says it).
    `vision_eps`: the eps a library computes the image tower with whatever its config says."""
    try:
        t, ti = section(data, "text_config", TEXT)
        v, vi = section(data, "vision_config", VISION)
        if t["position_embedding_type"] != "absolute":
            raise ConfigError(f"text_config.position_embedding_type is {t['position_embedding_type']!r}: "
                              "Chinese-CLIP's BERT has absolute positions")
        if t["pad_token_id"] != 0:
            # the padding mask is where the ids are 0, as Chinese-CLIP's tokenizer pads
            raise ConfigError(f"text_config.pad_token_id is {t['pad_token_id']!r}: Chinese-CLIP pads with id 0")
        if t.get("fuse"):
            raise ConfigError("text_config.fuse is true: PaddleNLP's fused BERT layers hold other tensors")
        text = TextConfig(ti("hidden_size"), ti("num_hidden_layers"), ti("intermediate_size"), None,
                          ti("vocab_size"), ti("num_attention_heads"), t["hidden_act"],
                          real(t["layer_norm_eps"], "text_config.layer_norm_eps"), kind="bert",
                          positions=ti("max_position_embeddings"), types=ti("type_vocab_size"))
        eps = vision_eps if vision_eps is not None else real(v["layer_norm_eps"], "vision_config.layer_norm_eps")
        vision = VisionConfig("vit", vi("num_hidden_layers"), vi("hidden_size"), vi("image_size"), vi("patch_size"),
                              vi("intermediate_size"), vi("num_attention_heads"), v["hidden_act"], eps)
        config = Config(integer(data.get("projection_dim", 512), "projection_dim"), vision, text)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"config.json is not a ChineseCLIPConfig ({type(e).__name__}: {e})") from None
    config.validate()
    return config


def tokenizer_files(config: Config, vocab_file, tokenizer_class: str) -> dict[str, bytes]:
    """vocab.txt (the source folder's, else the installed cn_clip's) and the tokenizer config, with the
    context as `model_max_length`, so that the library's tokenizer cuts where Chinese-CLIP's does."""
    from ..text.wordpiece import WordPiece, default_vocabulary

    vocab = WordPiece(vocab_file or default_vocabulary())  # checked: [CLS], [SEP], [UNK] present
    if len(vocab.vocab) > config.text.vocab_size:
        raise ConfigError(f"{vocab.path} holds {len(vocab.vocab)} tokens, more than the model's "
                          f"{config.text.vocab_size} word embeddings")
    tokenizer = {"tokenizer_class": tokenizer_class, "do_lower_case": True, "do_basic_tokenize": True,
                 "tokenize_chinese_chars": True, "model_max_length": config.text.context_length,
                 "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]"}
    specials = {k: tokenizer[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    return {"vocab.txt": vocab.data, "tokenizer_config.json": json.dumps(tokenizer, indent=2).encode(),
            "special_tokens_map.json": json.dumps(specials, indent=2).encode()}


def processor_file(config: Config) -> bytes:
    """ChineseCLIPImageProcessor's config: cn_clip resizes straight to R x R (no centre crop), bicubic,
    with CLIP's mean and std."""
    r = config.vision.image_size
    return json.dumps({
        "image_processor_type": "ChineseCLIPImageProcessor", "processor_class": "ChineseCLIPProcessor",
        "do_resize": True, "size": {"height": r, "width": r}, "resample": 3, "do_center_crop": False,
        "crop_size": {"height": r, "width": r}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }, indent=2).encode()
