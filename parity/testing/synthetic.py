"""Deterministic synthetic CLIP weights in the official release's dtype mix, cached on disk.

No official checkpoint can be downloaded here, so every test and the verify-all run use these: every
tensor drawn from a seeded generator at a trained-network-like scale, BatchNorm running statistics
calibrated by one pass over random images (random statistics blow deep ResNets up to ~1e7), and the
tensors the release stores in float16 (openai/CLIP `convert_weights`) cast to float16. open_clip's
models are stored in float32, as its LAION checkpoints are. `write_safetensors` streams a model too big
to hold twice (ViT-bigG-14) to a file, one tensor at a time.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np

from .. import towers
from ..config.schema import Config
from ..harness.weights import (GENERATOR_VERSION, cache_dir, cached_state_dict, calibration_images, config_of,  # noqa: F401
                               draw, family_of, init_std, made_once, make_state_dict, numpy_state_dict, release_dtype,
                               slug)
from ..io.formats.atomic import atomic_write
from ..layouts import HUB


def _planned_draw(key: str, shape: tuple, config: Config, seed: int) -> np.ndarray:
    # one tensor from a generator seeded by (seed, key): the same whatever order the tensors are made in
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key == "logit_scale":
        return np.full(shape, math.log(100.0), np.float32)
    if key == "logit_bias":
        return np.full(shape, -10.0, np.float32)  # SigLIP's initial bias
    if re.search(r"(ln_\w+|LayerNorm|layer_?norm\d?|final_layer_norm)\.weight$", key):
        return (1.0 + 0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)
    if key.endswith("bias"):
        return 0.02 * rng.standard_normal(shape, np.float32)
    return np.float32(init_std(key, shape, config)) * rng.standard_normal(shape, np.float32)


def write_safetensors(model: str | Config, path, seed: int = 0) -> int:
    """A synthetic ViT in float32 written to a safetensors file (open_clip's `open_clip_model.safetensors`
    form), one tensor drawn at a time, so that a model too big to hold twice can be made; returns bytes.
    Not `make_state_dict`'s weights: each tensor has its own generator, seeded by (seed, key)."""
    from functools import partial

    from ..io.formats import safetensors as st
    from ..io.tensors import Planned
    from ..io.save import Target

    config = config_of(model)
    if config.vision is not None and towers.vision(config).calibrated:
        raise ValueError("write_safetensors draws ViTs only (a ResNet's BatchNorm statistics need calibrating)")
    plan = {k: Planned(partial(_planned_draw, k, tuple(shape), config, seed), np.dtype(np.float32), tuple(shape))
            for k, shape in HUB.shapes(config).items()}
    tensors = Target(plan, False)
    with tensors.streaming():
        return atomic_write(Path(path), lambda f: st.write(f, tensors, {"format": "pt"}), force=True)


def release_archive(model: str | Config, seed: int = 0) -> Path:
    """A TorchScript archive in the official release's format, holding `cached_state_dict(variant, seed)`.

    Made as the release was: openai/CLIP's model traced, with the three int64 buffers the release
    carries (`input_resolution`, `context_length`, `vocab_size`), and the release's float16 set cast
    after tracing (tracing in float32 and casting is minutes faster than tracing in float16 on a CPU).
    Cached beside the safetensors file.
    """
    import torch
    from .official import build_official

    config = config_of(model)
    path = cache_dir() / f"{slug(config)}-seed{seed}-v{GENERATOR_VERSION}.pt"
    if path.exists():
        return path
    with made_once(path):
        if path.exists():  # made while this process waited
            return path
        model = build_official(cached_state_dict(config, seed), float32=True)
        entries = {"input_resolution": config.vision.image_size, "context_length": config.text.context_length,
                   "vocab_size": config.text.vocab_size}
        for name, value in entries.items():
            model.__dict__.pop(name, None)  # openai/CLIP keeps two of them as plain ints now
            model.register_buffer(name, torch.tensor(value, dtype=torch.int64))
        image = torch.zeros(1, 3, config.vision.image_size, config.vision.image_size)
        text = torch.ones(1, config.text.context_length, dtype=torch.int64)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks in nn.MultiheadAttention
            traced = torch.jit.trace(model, (image, text), check_trace=False)
            for key, param in traced.named_parameters():
                if release_dtype(key) == "float16":
                    param.data = param.data.half()
        atomic_write(path, lambda f: torch.jit.save(traced, f), force=True)
    return path
