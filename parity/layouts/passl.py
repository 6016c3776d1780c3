"""PASSL's CLIP (PyPI `passl`, PaddlePaddle/PASSL), whose notebooks load `ViT-B-32.pdparams` into `CLIPWrapper`.

Its blocks are `blocks.{i}` with a fused `attn.qkv` Linear ([W, 3W], Paddle's [in, out]), `attn.proj`,
`norm1`/`norm2`, `mlp.fc1`/`fc2`; the image tower's patch embedding, `norm_pre`/`norm_post`, a class
embedding [1, 1, W] and positional embedding [1, N, W]. File: a `.pdparams` pickle of
`{'state_dict': {'model.<key>': array}}`, as `CLIPWrapper.set_state_dict` takes it. ViT only: a PASSL
ResNet keeps its attention pool's positional embedding outside its state dict, so its files cannot be
complete.
"""
from __future__ import annotations

from . import openai
from .base import Fixed, Layout, resnet_unheld
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "passl", "paddle"
FILES = "Paddle .pdparams of {'state_dict': {'model.<key>': ...}} (CLIPWrapper.set_state_dict)"
# its model takes no config that says heads, activation or eps: it builds them by openai's rule
LIBRARY, FIXED_TEXT = "PASSL's CLIP", "QuickGELU, 64-wide heads, LayerNorm eps 1e-5 and a 4x MLP"
WRAP = ("state_dict", "model.")  # the file's tensors sit under this key, each name behind this prefix
NO_RESNET = "PASSL keeps a ResNet's attention-pool positional embedding outside its state dict, so its files are incomplete"


def _blocks(hub: str, layout: str) -> tuple[Row, ...]:
    # one tower's transformer blocks: the same rows for the image and the text tower
    return (
        Row(f"{hub}.{{i}}.attn.in_proj_weight", f"{layout}.{{i}}.attn.qkv.weight", "linear"),  # [3W, W] -> [W, 3W]
        Row(f"{hub}.{{i}}.attn.in_proj_bias", f"{layout}.{{i}}.attn.qkv.bias"),
        Row(f"{hub}.{{i}}.attn.out_proj.weight", f"{layout}.{{i}}.attn.proj.weight", "linear"),
        Row(f"{hub}.{{i}}.attn.out_proj.bias", f"{layout}.{{i}}.attn.proj.bias"),
        Row(f"{hub}.{{i}}.ln_1.{{x}}", f"{layout}.{{i}}.norm1.{{x}}"),
        Row(f"{hub}.{{i}}.ln_2.{{x}}", f"{layout}.{{i}}.norm2.{{x}}"),
        Row(f"{hub}.{{i}}.mlp.c_fc.weight", f"{layout}.{{i}}.mlp.fc1.weight", "linear"),
        Row(f"{hub}.{{i}}.mlp.c_fc.bias", f"{layout}.{{i}}.mlp.fc1.bias"),
        Row(f"{hub}.{{i}}.mlp.c_proj.weight", f"{layout}.{{i}}.mlp.fc2.weight", "linear"),
        Row(f"{hub}.{{i}}.mlp.c_proj.bias", f"{layout}.{{i}}.mlp.fc2.bias"),
    )


ROWS = (
    Row("visual.conv1.weight", "visual.patch_embed.proj.weight"),
    Row("visual.class_embedding", "visual.class_embedding", "batch2"),  # [W] -> [1, 1, W]
    Row("visual.positional_embedding", "visual.positional_embedding", "batch"),  # [N, W] -> [1, N, W]
    Row("visual.ln_pre.{x}", "visual.norm_pre.{x}"),
    Row("visual.ln_post.{x}", "visual.norm_post.{x}"),
    *_blocks("visual.transformer.resblocks", "visual.blocks"),
    *_blocks("transformer.resblocks", "transformer.blocks"),
    *(Row(name, None) for name in ("input_resolution", "context_length", "vocab_size")),
    Row("logit_scale", "logit_scale", "scalar"),
    Row("{p}", "{p}"),  # token and positional embeddings, ln_final, both projections: shared names
)
KEYMAP = KeyMap(ROWS)


def detect(keys) -> bool:
    return any(k.endswith("attn.qkv.weight") for k in keys) and "token_embedding.weight" in keys


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="pdparams", keymap=KEYMAP, detect=detect,
                holds={"clip": ("vit",)}, unheld=resnet_unheld(NAME, NO_RESNET),
                fixed=Fixed(LIBRARY, openai.rule, FIXED_TEXT), wrap=WRAP)
