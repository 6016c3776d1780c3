"""Deterministic synthetic CLIP weights in the official release's dtype mix, cached on disk: what
verify-all computes on where no release file is given (and the tests' weights).

Every tensor is drawn from a seeded generator at a trained-network-like scale; BatchNorm running statistics
are calibrated by one pass over random images (random statistics blow deep ResNets up to ~1e7); the tensors
the release stores in float16 (openai/CLIP `convert_weights`) are cast to float16. open_clip's models are
stored in float32, as its LAION checkpoints are.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import towers
from ..config import registry
from ..config.schema import Config
from ..io.formats.atomic import write_bytes
from ..layouts import HUB

GENERATOR_VERSION = 2  # bump when the recipe changes: it names the cache files
CALIBRATION_BATCH = 2

# the tensors that openai/CLIP's `convert_weights` halves: conv and linear weights/biases, the fused
# attention projection, and the two output projections
_RELEASE_FP16 = re.compile(
    r".*(conv\d\.weight|downsample\.0\.weight|in_proj_weight|in_proj_bias|out_proj\.(weight|bias)"
    r"|mlp\.c_(fc|proj)\.(weight|bias)|attnpool\.[qkvc]_proj\.(weight|bias))"
    r"|text_projection|visual\.proj")


def release_dtype(key: str, family: str = "openai") -> str:
    """The dtype the official release stores `key` in (open_clip's: float32 throughout)."""
    if key.endswith("num_batches_tracked"):
        return "int64"
    return "float16" if family == "openai" and _RELEASE_FP16.fullmatch(key) else "float32"


def family_of(config: Config) -> str:
    name = registry.name_of(config)
    return registry.get(name).family if name else "openai"


def init_std(key: str, shape: tuple, config: Config) -> float:
    """Standard deviation of the normal draw for a weight-like tensor (fan-in scaling)."""
    if config.text is not None and key in towers.text(config).embeddings:
        return 0.02
    if key == "positional_embedding":
        return 0.01
    if key in ("text_projection", "visual.proj", "visual.class_embedding", "visual.positional_embedding",
               "visual.attnpool.positional_embedding"):
        return shape[-1 if "positional" in key or "class" in key else 0] ** -0.5
    fan_in = math.prod(shape[1:])
    std = fan_in ** -0.5
    if key.endswith(("attn.out_proj.weight", "mlp.c_proj.weight", "attention.output.dense.weight",
                     "output.dense.weight", "mlp.fc2.weight")):
        # residual-branch outputs shrink with depth (GPT-2 / openai init), keeping the stream of order one
        layers = config.vision.layers if HUB.towers_of(key) == ("image",) else config.text.layers
        std *= (2 * layers) ** -0.5
    return std


def draw(config: Config, seed: int) -> dict:
    import torch

    family = family_of(config)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(HUB.shapes(config).items()):  # sorted: independent of dict order
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.int64)
            continue
        if key == "logit_scale":
            t = torch.full(shape, math.log(100.0))
        elif key == "logit_bias":
            t = torch.full(shape, -10.0)  # SigLIP's initial bias
        elif key.endswith("running_mean"):
            t = torch.zeros(shape)
        elif key.endswith("running_var"):
            t = torch.ones(shape)
        elif re.search(r"(ln_\w+|bn\d|downsample\.1|LayerNorm|layer_?norm\d?|final_layer_norm)\.weight$", key):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)  # norm gains near one
            if re.search(r"layer\d\.\d+\.bn3\.weight$", key):
                # the residual branch's last norm shrinks with depth, as the transformers' output
                # projections do (openai/CLIP zero-initialises it): the stream stays of order one, where
                # gains of one grow it ~sqrt(blocks) and amplify float32 rounding 100x by RN50x16's layer4
                t *= sum(config.vision.layers) ** -0.5
        elif key.endswith("bias") or key.endswith("in_proj_bias"):
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            t = init_std(key, shape, config) * torch.randn(shape, generator=gen)
        # round to the release dtype now, so calibration sees the weights that will be stored
        out[key] = t.to(getattr(torch, release_dtype(key, family))).float()
    return out


def calibration_images(resolution: int, seed: int):
    """Spatially smooth random images (bicubic-upsampled coarse noise plus fine grain), like photographs.

    White noise would calibrate every 3x3 conv for uncorrelated neighbours; a real image (and the constant
    canonical image) has correlated ones, and such statistics then grow activations ~3x per conv, to ~1e3.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(CALIBRATION_BATCH, 3, resolution // 32, resolution // 32, generator=gen)
    fine = torch.randn(CALIBRATION_BATCH, 3, resolution, resolution, generator=gen)
    return F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False) + 0.1 * fine


def _calibrate(config: Config, state: dict, seed: int) -> None:
    """Set BatchNorm running statistics to those of one batch of random images (ResNets only)."""
    import torch
    from ..models.torch_clip import CLIP

    model = CLIP(config)
    model.load_state_dict(state, strict=True)
    for m in model.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.visual.train()
    images = calibration_images(config.vision.image_size, seed + 1)
    with torch.no_grad():
        model.visual(images)
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            state[key] = value.clone()


def config_of(model: str | Config) -> Config:
    """A registered model's config, or the config given."""
    return registry.get(model).config if isinstance(model, str) else model


def make_state_dict(model: str | Config, seed: int = 0) -> dict:
    """A synthetic hub (openai-layout) torch state dict for a registered model or a config, in the
    release's dtype mix. A ResNet's BatchNorm statistics are calibrated with parity's model, which needs
    the whole config; the weights themselves need only its shapes."""
    import torch

    config = config_of(model)
    state = draw(config, seed)
    if config.vision is not None and towers.vision(config).calibrated:
        _calibrate(config, state, seed)
    family = family_of(config)
    return {k: v.to(getattr(torch, release_dtype(k, family))) for k, v in state.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("PARITY_CACHE", Path(__file__).resolve().parents[2] / ".cache")) / "synthetic"


@contextmanager
def made_once(path: Path):
    """Held while the cache file `path` is made: another process making the same file (a second test
    worker, a verify-all beside a test run) waits here, then finds it made. Files are still written
    atomically, so an interrupted run never leaves half a file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "a") as lock:  # the lock's own file; the data never
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, a crashed holder included
        yield


def cached_state_dict(model: str | Config, seed: int = 0) -> dict:
    """`make_state_dict`, generated once and kept as safetensors under `cache_dir()`."""
    from safetensors.torch import load_file, save

    config = config_of(model)
    path = cache_dir() / f"{slug(config)}-seed{seed}-v{GENERATOR_VERSION}.safetensors"
    if path.exists():
        return load_file(path)
    with made_once(path):
        if path.exists():  # made while this process waited
            return load_file(path)
        state = make_state_dict(config, seed)
        write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))
    return state


def numpy_state_dict(state: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


def slug(config: Config) -> str:
    name = registry.name_of(config)
    if name is None:  # an unregistered config: named by a hash of what it is
        import hashlib
        import json
        return "custom-" + hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    family = registry.get(name).family
    prefix = "" if family == "openai" or name.startswith(family) else family + "-"
    return prefix + re.sub(r"[^A-Za-z0-9]+", "-", name)
