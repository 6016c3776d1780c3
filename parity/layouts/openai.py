"""openai/CLIP's layout, the hub: its key names and shapes for any config, and the config its shapes give.

Every other layout maps to and from this one. Files: a TorchScript release archive, a `torch.save` state
dict (also wrapped, or with a `module.` prefix), or safetensors.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Mapping

import numpy as np

from ..config.schema import Config, ConfigError, TextConfig, VisionConfig
from .keymap import KeyMap, Row

NAME, FRAMEWORK = "openai", "torch"
FILES = "torch .pt (TorchScript release archive or state dict), safetensors"
KINDS = ("vit", "resnet")
TEXT_KINDS = ("clip", "bert")
FORMAT = "pt"
ARCHIVE_ENTRIES = ("input_resolution", "context_length", "vocab_size")  # the releases' three int buffers
KEYMAP = KeyMap((Row("{p}", "{p}"),))  # the hub maps to itself


def detect(keys) -> bool:
    if "bert.embeddings.word_embeddings.weight" in keys:  # Chinese-CLIP: openai's image towers, a BERT
        return any(k.endswith("attn.in_proj_weight") for k in keys) or "visual.bn1.running_mean" in keys
    return any(k.endswith("attn.in_proj_weight") for k in keys) and "token_embedding.weight" in keys


def _block(prefix: str, w: int, mlp: int) -> dict[str, tuple]:
    return {f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (mlp, w), f"{prefix}.mlp.c_fc.bias": (mlp,),
            f"{prefix}.mlp.c_proj.weight": (w, mlp), f"{prefix}.mlp.c_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,)}


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _resnet(v: VisionConfig, embed: int) -> dict[str, tuple]:
    w, half = v.width, v.width // 2
    s = {"visual.conv1.weight": (half, 3, 3, 3), **_bn("visual.bn1", half),
         "visual.conv2.weight": (half, half, 3, 3), **_bn("visual.bn2", half),
         "visual.conv3.weight": (w, half, 3, 3), **_bn("visual.bn3", w)}
    inplanes = w
    for stage, blocks in enumerate(v.layers, start=1):
        planes = w * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"visual.layer{stage}.{b}"
            s.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1), **_bn(f"{p}.bn1", planes),
                      f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                      f"{p}.conv3.weight": (4 * planes, planes, 1, 1), **_bn(f"{p}.bn3", 4 * planes)})
            if b == 0:  # the first block of every stage changes width or resolution
                s.update({f"{p}.downsample.0.weight": (4 * planes, inplanes, 1, 1),
                          **_bn(f"{p}.downsample.1", 4 * planes)})
            inplanes = 4 * planes
    d = 32 * w
    s["visual.attnpool.positional_embedding"] = (v.grid * v.grid + 1, d)
    for x in ("k", "q", "v"):
        s.update({f"visual.attnpool.{x}_proj.weight": (d, d), f"visual.attnpool.{x}_proj.bias": (d,)})
    s.update({"visual.attnpool.c_proj.weight": (embed, d), "visual.attnpool.c_proj.bias": (embed,)})
    return s


def _vit(v: VisionConfig, embed: int) -> dict[str, tuple]:
    w, p = v.width, v.patch_size
    s = {"visual.class_embedding": (w,), "visual.positional_embedding": (v.grid * v.grid + 1, w),
         "visual.proj": (w, embed), "visual.conv1.weight": (w, 3, p, p),
         "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)}
    for i in range(v.layers):
        s.update(_block(f"visual.transformer.resblocks.{i}", w, v.mlp_width))
    s.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
    return s


TOWERS = ("image", "text")


def towers_of(key: str) -> tuple[str, ...]:
    """The towers a hub key belongs to: the logit scale to both (a one-tower model holds it too)."""
    if key == "logit_scale":
        return TOWERS
    if key in ARCHIVE_ENTRIES:
        return ()
    return ("image",) if key.startswith("visual.") else ("text",)


def tower_shapes(config: Config, towers=TOWERS) -> dict[str, tuple]:
    """The hub keys, with shapes, of a model of these towers only."""
    return {k: s for k, s in shapes(config).items() if set(towers_of(k)) & set(towers)}


def _bert(t: TextConfig) -> dict[str, tuple]:
    # Chinese-CLIP's text tower, under its own names (cn_clip's `bert.*`): a BERT without a pooler
    w, m = t.width, t.mlp_width
    s = {"bert.embeddings.word_embeddings.weight": (t.vocab_size, w),
         "bert.embeddings.position_embeddings.weight": (t.positions, w),
         "bert.embeddings.token_type_embeddings.weight": (t.types, w),
         "bert.embeddings.LayerNorm.weight": (w,), "bert.embeddings.LayerNorm.bias": (w,)}
    for i in range(t.layers):
        p = f"bert.encoder.layer.{i}"
        for x in ("query", "key", "value"):
            s.update({f"{p}.attention.self.{x}.weight": (w, w), f"{p}.attention.self.{x}.bias": (w,)})
        s.update({f"{p}.attention.output.dense.weight": (w, w), f"{p}.attention.output.dense.bias": (w,),
                  f"{p}.attention.output.LayerNorm.weight": (w,), f"{p}.attention.output.LayerNorm.bias": (w,),
                  f"{p}.intermediate.dense.weight": (m, w), f"{p}.intermediate.dense.bias": (m,),
                  f"{p}.output.dense.weight": (w, m), f"{p}.output.dense.bias": (w,),
                  f"{p}.output.LayerNorm.weight": (w,), f"{p}.output.LayerNorm.bias": (w,)})
    return s


def shapes(config: Config, archive_entries: bool = False) -> dict[str, tuple]:
    """Every key of the hub state dict for `config`, with its shape (in openai/CLIP's order; a BERT text
    tower in Chinese-CLIP's)."""
    t = config.text
    s = {} if t.is_bert else {"positional_embedding": (t.context_length, t.width)}
    s.update({"text_projection": (t.width, config.embed_dim), "logit_scale": ()})
    s.update(_vit(config.vision, config.embed_dim) if config.vision.is_vit else _resnet(config.vision, config.embed_dim))
    if t.is_bert:
        s.update(_bert(t))
        return s
    for i in range(t.layers):
        s.update(_block(f"transformer.resblocks.{i}", t.width, t.mlp_width))
    s.update({"token_embedding.weight": (t.vocab_size, t.width), "ln_final.weight": (t.width,),
              "ln_final.bias": (t.width,)})
    if archive_entries:
        s.update({k: () for k in ARCHIVE_ENTRIES})
    return s


def defaults(config: Config, archive_entries: bool = False) -> dict[str, np.ndarray]:
    """Hub-only tensors, where no record says them: BatchNorm's counters at 0, the archive entries from the config."""
    out = {k: np.array(0, dtype=np.int64) for k in shapes(config) if k.endswith("num_batches_tracked")}
    if archive_entries:
        out.update({"input_resolution": np.array(config.vision.image_size, dtype=np.int64),
                    "context_length": np.array(config.text.context_length, dtype=np.int64),
                    "vocab_size": np.array(config.text.vocab_size, dtype=np.int64)})
    return out


def _shape(hub: Mapping[str, tuple], key: str) -> tuple[int, ...]:
    try:
        return tuple(hub[key])
    except KeyError:
        raise ConfigError(f"not a CLIP state dict: missing {key!r}") from None


def _count(keys, prefix: str) -> int:
    # number of distinct integer indices right after `prefix`
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def _grid(n_positions: int, what: str) -> int:
    grid = round((n_positions - 1) ** 0.5)
    if grid * grid + 1 != n_positions:
        raise ConfigError(f"{what} has {n_positions} rows, not grid**2 + 1")
    return grid


def rule(shapes: Config) -> Config:
    """openai/CLIP's `build_model` rule for what no tensor says: 64-wide heads, QuickGELU, LayerNorm eps
    1e-5, and an MLP 4x the width. Libraries ported from it (paddleclip, PASSL) build every CLIP so."""
    v, t = shapes.vision, shapes.text
    if t.is_bert:
        raise ConfigError("openai's rule builds CLIP's own text tower, not a BERT")
    extra = dict(mlp_width=4 * v.width, activation="quick_gelu", eps=1e-5) if v.is_vit else {}
    vision = replace(v, heads=(v.width if v.is_vit else 32 * v.width) // 64, **extra)
    text = replace(t, heads=t.width // 64, mlp_width=4 * t.width, activation="quick_gelu", eps=1e-5)
    return Config(shapes.embed_dim, vision, text)


def infer(hub: Mapping[str, tuple]) -> Config:
    """What the shapes of a hub key set say: every field but heads, activations and eps (None).

    Works on any {key: shape}; the key check against `shapes(config)` comes after.
    """
    keys = list(hub)
    if "visual.proj" in hub:
        width, _, patch, _ = _shape(hub, "visual.conv1.weight")  # [width, 3, patch, patch]
        grid = _grid(_shape(hub, "visual.positional_embedding")[0], "visual.positional_embedding")
        mlp = _shape(hub, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
        vision = VisionConfig("vit", _count(keys, "visual.transformer.resblocks."), width, patch * grid, patch, mlp)
    else:
        layers = tuple(_count(keys, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        width = _shape(hub, "visual.layer1.0.conv1.weight")[0]
        grid = _grid(_shape(hub, "visual.attnpool.positional_embedding")[0], "visual.attnpool.positional_embedding")
        vision = VisionConfig("resnet", layers, width, grid * 32)  # the ResNet downsamples by 32
    if "bert.embeddings.word_embeddings.weight" in hub:
        vocab, text_width = _shape(hub, "bert.embeddings.word_embeddings.weight")  # [vocab, width]
        text = TextConfig(text_width, _count(keys, "bert.encoder.layer."),
                          _shape(hub, "bert.encoder.layer.0.intermediate.dense.weight")[0], None, vocab,
                          kind="bert", positions=_shape(hub, "bert.embeddings.position_embeddings.weight")[0],
                          types=_shape(hub, "bert.embeddings.token_type_embeddings.weight")[0])
        return Config(_shape(hub, "text_projection")[1], vision, text)
    vocab, text_width = _shape(hub, "token_embedding.weight")  # [vocab, width]
    text = TextConfig(text_width, _count(keys, "transformer.resblocks."),
                      _shape(hub, "transformer.resblocks.0.mlp.c_fc.weight")[0],
                      _shape(hub, "positional_embedding")[0], vocab)
    return Config(_shape(hub, "text_projection")[1], vision, text)
