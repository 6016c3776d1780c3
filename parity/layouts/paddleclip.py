"""The AI Studio Paddle port of CLIP (PyPI `paddleclip`, AgentMaker/Paddle-CLIP), whose reference table parity
reproduces: parity's Paddle layout, except the ResNet attention pool, an `nn.MultiHeadAttention` named
`visual.attnpool.attn.{q,k,v,out}_proj` (Linear [in, out]). Its ViTs are parity's Paddle layout exactly,
so a ViT file is read as `paddle`; writing `paddleclip` gives the same keys. File: a `.pdparams` pickle.
"""
from __future__ import annotations

from . import openai, paddle
from .base import Fixed, Layout
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "paddleclip", "paddle"
FILES = "Paddle .pdparams (paddle.load + set_state_dict into paddleclip's CLIP)"
# its model takes no config that says heads, activation or eps: it builds them by openai's rule
LIBRARY, FIXED_TEXT = "paddleclip's CLIP", "QuickGELU, 64-wide heads, LayerNorm eps 1e-5 and a 4x MLP"

ROWS = (
    # the pool's output projection is the attention's out_proj; q, k, v sit under .attn
    Row("visual.attnpool.c_proj.weight", "visual.attnpool.attn.out_proj.weight", "linear"),
    Row("visual.attnpool.c_proj.bias", "visual.attnpool.attn.out_proj.bias"),
    Row("visual.attnpool.{x}_proj.weight", "visual.attnpool.attn.{x}_proj.weight", "linear"),
    Row("visual.attnpool.{x}_proj.bias", "visual.attnpool.attn.{x}_proj.bias"),
    *(row for row in paddle.ROWS if not row.hub.startswith(("visual.attnpool.", "bert."))),  # no BERT there
)
KEYMAP = KeyMap(ROWS)


def detect(keys) -> bool:
    return "visual.attnpool.attn.q_proj.weight" in keys


LAYOUT = Layout(name=NAME, framework=FRAMEWORK, files=FILES, format="pdparams", keymap=KEYMAP, detect=detect,
                fixed=Fixed(LIBRARY, openai.rule, FIXED_TEXT))
