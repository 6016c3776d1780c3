"""The official openai/CLIP model (`clip/model.py` from the `openai-clip` package), as the oracle.

The package's `clip/__init__` imports torchvision, which does not work beside torch 2.13, so the model
file is loaded on its own, without running the package's `__init__`.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def official_dir() -> Path:
    """The installed openai-clip package's folder, found without importing it (its `__init__` imports
    torchvision): its model file lies there."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the openai-clip package is not installed: `pip install openai-clip`")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=None)
def official_model_module():
    """openai/CLIP's `clip/model.py`, imported from its file alone."""
    path = official_dir() / "model.py"
    spec = importlib.util.spec_from_file_location("parity_official_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_official(state_dict: dict, float32: bool = True):
    """openai/CLIP's `build_model` on a copy of `state_dict` (torch tensors); float32 compute by default."""
    model = official_model_module().build_model(dict(state_dict))  # it deletes archive entries in place
    return model.float().eval() if float32 else model.eval()


def official_clip(config):
    """openai/CLIP's `CLIP` module for a Config it can express (randomly initialised, float32): OpenAI's
    own hyper-parameters (QuickGELU, MLP 4x, eps 1e-5, head width 64), as its constructor fixes them."""
    v, t = config.vision, config.text
    return official_model_module().CLIP(config.embed_dim, v.image_size, v.layers, v.width, v.patch_size,
                                        t.context_length, t.vocab_size, t.width, t.heads, t.layers)
