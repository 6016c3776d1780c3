"""openai/CLIP's ModifiedResNet image tower: a 3-convolution stem, four stages of Bottlenecks with
BatchNorm, and a multi-head attention pool over the final grid (the image downsampled 32x)."""
from __future__ import annotations

from dataclasses import replace

from ..config.parts import VisionConfig
from ..errors import ConfigError
from .base import Shapes, VisionTower, count, grid, shape


def _bn(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def hub_shapes(config) -> Shapes:
    v, embed = config.vision, config.embed_dim
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
    d, side = 32 * w, v.image_size // 32
    s["visual.attnpool.positional_embedding"] = (side * side + 1, d)
    for x in ("k", "q", "v"):
        s.update({f"visual.attnpool.{x}_proj.weight": (d, d), f"visual.attnpool.{x}_proj.bias": (d,)})
    s.update({"visual.attnpool.c_proj.weight": (embed, d), "visual.attnpool.c_proj.bias": (embed,)})
    return s


def infer(hub) -> VisionConfig:
    layers = tuple(count(hub, f"visual.layer{b}.") for b in (1, 2, 3, 4))
    width = shape(hub, "visual.layer1.0.conv1.weight")[0]
    side = grid(shape(hub, "visual.attnpool.positional_embedding")[0], "visual.attnpool.positional_embedding")
    return VisionConfig("resnet", layers, width, side * 32)  # the ResNet downsamples by 32


def check(v: VisionConfig) -> None:
    if isinstance(v.layers, int) or len(v.layers) != 4:
        raise ConfigError("vision.layers: one depth for a ViT, four stage depths for a ResNet")


def describe(v: VisionConfig) -> str:
    return f"ResNet {','.join(map(str, v.layers))}x{v.width} @{v.image_size} pool heads {v.heads}"


def rule(v: VisionConfig) -> VisionConfig:
    return replace(v, heads=32 * v.width // 64)


TOWER = VisionTower(kind="resnet", part="vision", label="ResNet", telltale="visual.attnpool.positional_embedding",
                    hub_shapes=hub_shapes, infer=infer, check=check, describe=describe, unknown=("heads",),
                    block="Bottleneck", rule=rule, attention_width=lambda v: 32 * v.width, calibrated=True,
                    prefix="visual.", embed=lambda hub: shape(hub, "visual.attnpool.c_proj.weight")[0])  # [embed, 32 width]
