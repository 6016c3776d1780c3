"""parity's own Paddle layout: the hub's names wherever Paddle's layers allow, so its rows only change tensors.

Transformer attention has separate q/k/v/out_proj Linears (Paddle's `nn.MultiHeadAttention` names),
Linear weights are [in, out], BatchNorm holds `_mean`/`_variance` and no `num_batches_tracked`,
`logit_scale` has shape [1]. File: a `.pdparams` pickle, with parity's record under a reserved key.
"""
from __future__ import annotations

from .openai import ARCHIVE_ENTRIES
from .base import Layout, siglip_keys
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "paddle", "paddle"
FILES = "Paddle .pdparams (parity's record under 'parity@@extras'), or safetensors"

ROWS = (
    # transformer blocks of both towers: the hub fuses q, k, v into one [3D, D] in_proj
    Row("{p}.attn.in_proj_weight", "{p}.attn.{qkv}_proj.weight", "split_qkv_linear"),
    Row("{p}.attn.in_proj_bias", "{p}.attn.{qkv}_proj.bias", "split_qkv"),
    Row("{p}.attn.out_proj.weight", "{p}.attn.out_proj.weight", "linear"),
    Row("{p}.mlp.c_{x}.weight", "{p}.mlp.c_{x}.weight", "linear"),
    Row("visual.attnpool.{x}_proj.weight", "visual.attnpool.{x}_proj.weight", "linear"),
    Row("{p}.running_mean", "{p}._mean"),
    Row("{p}.running_var", "{p}._variance"),
    Row("{p}.num_batches_tracked", None),
    *(Row(name, None) for name in ARCHIVE_ENTRIES),
    Row("logit_scale", "logit_scale", "scalar"),
    # a BERT text tower (Chinese-CLIP): its Linears transposed, embeddings and LayerNorms as they are
    Row("bert.embeddings.{p}.weight", "bert.embeddings.{p}.weight"),
    Row("bert.{p}.LayerNorm.weight", "bert.{p}.LayerNorm.weight"),
    Row("bert.{p}.weight", "bert.{p}.weight", "linear"),
    Row("{p}", "{p}"),  # every other name is shared (validated against the expected shapes)
)
KEYMAP = KeyMap(ROWS)
# SigLIP's towers under transformers' names: every Linear transposed, the MAP head's fused in_proj split
SIGLIP = KeyMap((
    Row("vision_model.head.attention.in_proj_weight", "vision_model.head.attention.{qkv}_proj.weight",
        "split_qkv_linear"),
    Row("vision_model.head.attention.in_proj_bias", "vision_model.head.attention.{qkv}_proj.bias", "split_qkv"),
    Row("{p}_proj.weight", "{p}_proj.weight", "linear"),  # the blocks' q, k, v, out; the head's out_proj
    Row("{p}.mlp.fc{i}.weight", "{p}.mlp.fc{i}.weight", "linear"),
    Row("text_model.head.weight", "text_model.head.weight", "linear"),
    Row("{p}", "{p}"),  # embeddings, the probe, LayerNorms, biases, the scale and bias ([1] already)
))


def detect(keys) -> bool:
    if siglip_keys(keys):  # the MAP head's q, k, v apart (a text tower alone: its shapes tell it from hf's)
        return "vision_model.head.attention.in_proj_weight" not in keys
    vit = any(k.endswith("attn.q_proj.weight") and not k.startswith("visual.attnpool.") for k in keys)
    if "bert.embeddings.word_embeddings.weight" in keys:  # Chinese-CLIP's towers
        return vit or "visual.bn1._mean" in keys
    # a whole CLIP, its text tower alone, or its ViT image tower alone
    return (vit and ("token_embedding.weight" in keys or "visual.class_embedding" in keys)
            and "visual.attnpool.attn.q_proj.weight" not in keys)


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="pdparams", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit", "resnet"), "bert": ("vit", "resnet"), "siglip_text": ("siglip_vit",)},
                alone=("image", "text"), families={"siglip": SIGLIP})
