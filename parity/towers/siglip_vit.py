"""SigLIP's image tower (transformers' `SiglipVisionTransformer`, under `vision_model.`): a patch convolution
with a bias, learned positions for the patches only (no class token, no pre-LayerNorm), pre-LayerNorm
blocks with q, k, v apart, a post-LayerNorm, and a MAP head: a learned probe attending over the patches
(torch's `MultiheadAttention`, its q, k, v fused in `in_proj`), a LayerNorm and an MLP with a residual. The
head's output is the image embedding: no projection follows it.

The tensors say the image size only to a patch: a 384-pixel so400m and a 378-pixel one have the same
27 x 27 patches (a stride-14 convolution drops the last 6 pixels). Shapes give the grid's size in pixels
(378), and a config of 384 fits them (`said`); the size itself comes from the config file or the registry.
"""
from __future__ import annotations

from dataclasses import replace

from ..config.parts import VisionConfig
from ..errors import ConfigError
from .base import Shapes, VisionTower, count, encoder_shapes, grid, shape

PREFIX = "vision_model"


def hub_shapes(config) -> Shapes:
    v, w, p = config.vision, config.vision.width, config.vision.patch_size
    if config.whole and config.embed_dim != w:
        raise ConfigError(f"embed_dim is {config.embed_dim}: SigLIP's image embedding is its MAP head's output, "
                          f"{w} wide, and the text head must project to it")
    side = v.image_size // p  # the convolution drops what is left over
    s = {f"{PREFIX}.embeddings.patch_embedding.weight": (w, 3, p, p), f"{PREFIX}.embeddings.patch_embedding.bias": (w,),
         f"{PREFIX}.embeddings.position_embedding.weight": (side * side, w)}
    s.update(encoder_shapes(f"{PREFIX}.encoder", v.layers, w, v.mlp_width))
    h = f"{PREFIX}.head"
    s.update({f"{PREFIX}.post_layernorm.weight": (w,), f"{PREFIX}.post_layernorm.bias": (w,),
              f"{h}.probe": (1, 1, w), f"{h}.attention.in_proj_weight": (3 * w, w), f"{h}.attention.in_proj_bias": (3 * w,),
              f"{h}.attention.out_proj.weight": (w, w), f"{h}.attention.out_proj.bias": (w,),
              f"{h}.layernorm.weight": (w,), f"{h}.layernorm.bias": (w,),
              f"{h}.mlp.fc1.weight": (v.mlp_width, w), f"{h}.mlp.fc1.bias": (v.mlp_width,),
              f"{h}.mlp.fc2.weight": (w, v.mlp_width), f"{h}.mlp.fc2.bias": (w,)})
    return s


def infer(hub) -> VisionConfig:
    conv = shape(hub, f"{PREFIX}.embeddings.patch_embedding.weight")
    if len(conv) != 4:  # SigLIP2 NaFlex's patch embedding is a Linear [width, patch * patch * 3]
        raise ConfigError(f"a patch embedding of shape {list(conv)}, not a convolution: SigLIP2 NaFlex (Siglip2Model), "
                          "whose images come in any aspect ratio, which parity does not compute")
    width, _, patch, _ = conv  # [width, 3, patch, patch]
    mlp = shape(hub, f"{PREFIX}.encoder.layers.0.mlp.fc1.weight")[0]
    side = grid(shape(hub, f"{PREFIX}.embeddings.position_embedding.weight")[0], f"{PREFIX}.embeddings.position_embedding",
                extra=0)
    return VisionConfig("siglip_vit", count(hub, f"{PREFIX}.encoder.layers."), width, side * patch, patch, mlp)


def said(v: VisionConfig) -> VisionConfig:
    # what the tensors say of the image size: the patches' span, what is left over dropped
    return replace(v, image_size=v.image_size // v.patch_size * v.patch_size) if v.image_size and v.patch_size else v


def check(v: VisionConfig) -> None:
    if not isinstance(v.layers, int) or v.patch_size is None or v.mlp_width is None:
        raise ConfigError("a SigLIP image tower has one depth, a vision.patch_size and a vision.mlp_width")
    if v.image_size is not None and v.image_size < v.patch_size:
        raise ConfigError(f"vision.image_size {v.image_size} is smaller than a patch ({v.patch_size})")


def describe(v: VisionConfig) -> str:
    return (f"SigLIP ViT {v.layers}x{v.width}/{v.patch_size} mlp {v.mlp_width} @{v.image_size} heads {v.heads} "
            f"{v.activation} eps {v.eps} MAP head")


TOWER = VisionTower(
    kind="siglip_vit", part="vision", label="SigLIP image", telltale=f"{PREFIX}.head.probe",
    hub_shapes=hub_shapes, infer=infer, check=check, describe=describe,
    unknown=("heads", "activation", "eps"), said=said,
    block="SiglipEncoderLayer", embeddings=(f"{PREFIX}.embeddings.position_embedding.weight", f"{PREFIX}.head.probe"),
    alone=True, prefix=f"{PREFIX}.", family="siglip", projection_kind="none")
