"""transformers' `SiglipConfig`, `SiglipTextConfig` and `SiglipVisionConfig` (config.json of `SiglipModel`,
`SiglipTextModel`, `SiglipVisionModel`), and the tokenizer and processor files `SiglipProcessor` reads: what
the hf layout writes and reads for SigLIP's towers. Not a layout itself.

A SigLIP2 checkpoint at a fixed resolution is a `SiglipModel` (its config says `model_type: siglip`, with
Gemma's 256k vocabulary); a NaFlex one (`siglip2`, `Siglip2Model`) patchifies images of any aspect ratio and
resizes its position embeddings per image, which parity does not compute: it is refused in one line.
"""
from __future__ import annotations

import json

from .schema import Config, ConfigError, TextConfig, VisionConfig, real, section

MODEL_TYPES = {"whole": "siglip", "text": "siglip_text_model", "image": "siglip_vision_model"}
ARCHITECTURES = {"whole": "SiglipModel", "text": "SiglipTextModel", "image": "SiglipVisionModel"}
NAFLEX = ("siglip2", "siglip2_text_model", "siglip2_vision_model")
# transformers 4.57's SiglipTextConfig() and SiglipVisionConfig() defaults, for keys a config.json leaves out
TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "max_position_embeddings": 64, "vocab_size": 32000, "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6, "projection_size": None, "pad_token_id": 1, "bos_token_id": 49406,
        "eos_token_id": 49407}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu_pytorch_tanh",
          "layer_norm_eps": 1e-6, "vision_use_head": True}
# transformers' hidden_act -> parity's activation: the forms parity computes exactly as transformers does
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def is_siglip(data: dict) -> bool:
    return data.get("model_type") in (*MODEL_TYPES.values(), *NAFLEX)


def _activation(value, name: str) -> str:
    if value not in ACTIVATIONS:
        raise ConfigError(f"{name} is {value!r}: parity computes {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[value]


def _text(data: dict, key: str) -> tuple[TextConfig, int]:
    t, ti = section(data, key, TEXT)
    width = ti("hidden_size")
    projection = width if t.get("projection_size") is None else ti("projection_size")
    return TextConfig(width, ti("num_hidden_layers"), ti("intermediate_size"), ti("max_position_embeddings"),
                      ti("vocab_size"), ti("num_attention_heads"), _activation(t["hidden_act"], f"{key}.hidden_act"),
                      real(t["layer_norm_eps"], f"{key}.layer_norm_eps"), kind="siglip_text"), projection


def _vision(data: dict, key: str) -> VisionConfig:
    v, vi = section(data, key, VISION)
    if v.get("vision_use_head") is not True:
        raise ConfigError(f"{key}.vision_use_head is {v.get('vision_use_head')!r}: parity computes SigLIP's image "
                          "tower with its MAP head (a VLM's headless tower is not yet computed)")
    if vi("num_channels") != 3:
        raise ConfigError(f"{key}.num_channels is {v['num_channels']!r}: parity computes RGB images")
    return VisionConfig("siglip_vit", vi("num_hidden_layers"), vi("hidden_size"), vi("image_size"), vi("patch_size"),
                        vi("intermediate_size"), vi("num_attention_heads"),
                        _activation(v["hidden_act"], f"{key}.hidden_act"), real(v["layer_norm_eps"], f"{key}.layer_norm_eps"))


def config_from_json(data: dict) -> Config:
    """The Config transformers builds from a SigLIP config.json (its defaults where a key is absent)."""
    kind = data.get("model_type")
    if kind in NAFLEX:
        raise ConfigError(f"a SigLIP2 NaFlex model (model_type {kind}): its patches come in any aspect ratio and its "
                          "position embeddings are resized per image, which parity does not compute; SigLIP2 at a "
                          "fixed resolution (model_type siglip) it does")
    try:
        if kind == MODEL_TYPES["text"]:
            text, projection = _text({"text_config": data}, "text_config")
            config = Config(projection, None, text)
        elif kind == MODEL_TYPES["image"]:
            config = Config(None, _vision({"vision_config": data}, "vision_config"), None)
        else:
            text, projection = _text(data, "text_config")
            config = Config(projection, _vision(data, "vision_config"), text)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"config.json is not a SiglipConfig ({type(e).__name__}: {e})") from None
    config.validate()
    if config.whole and config.embed_dim != config.vision.width:
        raise ConfigError(f"text_config.projection_size is {config.embed_dim}, but the image embedding is "
                          f"{config.vision.width} wide: the two cannot be compared")
    return config


def _text_json(t: TextConfig, projection: int, source: dict | None) -> dict:
    made = {"model_type": MODEL_TYPES["text"], "hidden_size": t.width, "intermediate_size": t.mlp_width,
            "num_attention_heads": t.heads, "num_hidden_layers": t.layers, "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size, "hidden_act": _hidden_act(t.activation), "layer_norm_eps": t.eps,
            "projection_size": projection, **{k: TEXT[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}}
    # a folder converted from one of this layout keeps the token ids its library read
    made.update({k: source[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id") if isinstance(source, dict)
                 and isinstance(source.get(k), int)})
    return made


def _vision_json(v: VisionConfig) -> dict:
    return {"model_type": MODEL_TYPES["image"], "hidden_size": v.width, "intermediate_size": v.mlp_width,
            "num_attention_heads": v.heads, "num_hidden_layers": v.layers, "image_size": v.image_size,
            "patch_size": v.patch_size, "num_channels": 3, "hidden_act": _hidden_act(v.activation),
            "layer_norm_eps": v.eps}


def _hidden_act(activation: str) -> str:
    return {ours: theirs for theirs, ours in ACTIVATIONS.items()}[activation]


def config_to_json(config: Config, source: dict | None = None) -> dict:
    """transformers' config.json for `config`: a SiglipConfig, or a tower's alone."""
    text_source = source.get("text_config", source) if isinstance(source, dict) else None
    if not config.whole:
        (tower,) = config.towers
        part = (_text_json(config.text, config.embed_dim, text_source) if tower == "text"
                else _vision_json(config.vision))
        return {"architectures": [ARCHITECTURES[tower]], **part, "torch_dtype": "float32"}
    return {"architectures": [ARCHITECTURES["whole"]], "model_type": MODEL_TYPES["whole"], "initializer_factor": 1.0,
            "torch_dtype": "float32", "text_config": _text_json(config.text, config.embed_dim, text_source),
            "vision_config": _vision_json(config.vision)}


def processor_files(config: Config, vocab_file=None) -> dict[str, bytes]:
    """`SiglipProcessor`'s files: the tokenizer's (the SentencePiece model, where there is one) and the image
    processor's (straight to R x R, bicubic, mean and std 0.5)."""
    from ..text.spiece import VOCABULARY, read_model

    files: dict[str, bytes] = {}
    if config.text is not None and vocab_file is not None:
        files[VOCABULARY] = read_model(vocab_file)
        files["tokenizer_config.json"] = json.dumps({
            "tokenizer_class": "SiglipTokenizer", "model_max_length": config.text.context_length,
            "do_lower_case": True, "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
            "model_input_names": ["input_ids"]}, indent=2).encode()
        files["special_tokens_map.json"] = json.dumps(
            {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}, indent=2).encode()
    if config.vision is not None:
        r = config.vision.image_size
        files["preprocessor_config.json"] = json.dumps({
            "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
            "do_resize": True, "size": {"height": r, "width": r}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}, indent=2).encode()
    return files
