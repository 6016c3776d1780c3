"""The Vision Transformer image tower (openai/CLIP's `VisionTransformer`): a patch convolution, a class
token, learned positions, pre- and post-LayerNorm, residual attention blocks, a projection."""
from __future__ import annotations

from dataclasses import replace

from ..config.parts import VisionConfig
from ..errors import ConfigError
from .base import OPENAI_RULE, Shapes, VisionTower, block_shapes, count, grid, shape


def hub_shapes(config) -> Shapes:
    v, w, p = config.vision, config.vision.width, config.vision.patch_size
    side = v.image_size // p
    s = {"visual.class_embedding": (w,), "visual.positional_embedding": (side * side + 1, w),
         "visual.proj": (w, config.embed_dim), "visual.conv1.weight": (w, 3, p, p),
         "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)}
    for i in range(v.layers):
        s.update(block_shapes(f"visual.transformer.resblocks.{i}", w, v.mlp_width))
    s.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
    if config.embed_dim is None:  # an image tower saved without its projection (CLIPVisionModel)
        del s["visual.proj"]
    return s


def infer(hub) -> VisionConfig:
    width, _, patch, _ = shape(hub, "visual.conv1.weight")  # [width, 3, patch, patch]
    side = grid(shape(hub, "visual.positional_embedding")[0], "visual.positional_embedding")
    mlp = shape(hub, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
    return VisionConfig("vit", count(hub, "visual.transformer.resblocks."), width, patch * side, patch, mlp)


def check(v: VisionConfig) -> None:
    if not isinstance(v.layers, int):
        raise ConfigError("vision.layers: one depth for a ViT, four stage depths for a ResNet")
    if v.patch_size is None or v.mlp_width is None:
        raise ConfigError("a ViT needs vision.patch_size and vision.mlp_width")


def describe(v: VisionConfig) -> str:
    return (f"ViT {v.layers}x{v.width}/{v.patch_size} mlp {v.mlp_width} @{v.image_size} heads {v.heads} "
            f"{v.activation} eps {v.eps}")


def rule(v: VisionConfig) -> VisionConfig:
    return replace(v, heads=v.width // 64, mlp_width=4 * v.width, **OPENAI_RULE)


TOWER = VisionTower(kind="vit", part="vision", label="ViT", telltale="visual.class_embedding", hub_shapes=hub_shapes,
                    infer=infer, check=check, describe=describe, unknown=("heads", "activation", "eps"),
                    block="ResidualAttentionBlock", rule=rule, alone=True, prefix="visual.",
                    embed=lambda hub: shape(hub, "visual.proj")[1] if "visual.proj" in hub else None)  # [width, embed]
