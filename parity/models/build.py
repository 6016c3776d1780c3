"""Build parity's models from state dicts, strictly: names, shapes and dtypes are checked before loading.

Paddle's `set_state_dict` is not strict (a missing key only warns, a mis-shaped one is skipped and the
random init kept, a float16 tensor for a float32 parameter raises halfway through), so nothing reaches
it before parity has checked the whole dict itself. A model is built only from a complete config.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..config.schema import Config
from ..errors import ConfigMissingError
from ..io.formats.source import contiguous
from .frameworks import import_paddle
from ..layouts import HUB, StateDictError, check_keys
from ..layouts import paddle as PADDLE
from ..layouts.openai import ARCHIVE_ENTRIES
from ..io.tensors import as_numpy, dtype_of


def _complete(config: Config) -> Config:
    if not config.complete:
        raise ConfigMissingError(f"a model cannot be built without {', '.join(config.missing())}")
    return config


def torch_model(state_dict: Mapping, config: Config, dtype: str = "float32", device: str = "cpu",
                towers=HUB.TOWERS):
    """parity's torch CLIP in eval mode, `state_dict` (the hub layout, any dtype mix; arrays, or plans
    made here) loaded strictly. `towers`: a one-tower model takes that tower's keys only.

    The official archives' int entries (`input_resolution`, ...) are accepted and dropped, as
    openai/CLIP's `build_model` does. The parameters are the state dict's own float32 arrays where they
    can be (built on the meta device and assigned: no second copy of a large model).
    """
    import torch
    from .torch_clip import CLIP

    _complete(config)
    expected = HUB.tower_shapes(config, towers)
    check_keys({k: v for k, v in state_dict.items() if k not in ARCHIVE_ENTRIES and set(HUB.towers_of(k)) & set(towers)}
               if set(towers) != set(HUB.TOWERS) else state_dict, expected, "hub state dict",
               optional=ARCHIVE_ENTRIES)
    with torch.device("meta"):
        model = CLIP(config, towers)
    tensors = {k: torch.from_numpy(_owned(as_numpy(state_dict[k]))) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def _owned(a: np.ndarray) -> np.ndarray:
    # a parameter that shares memory must own it writable: a read-only (mapped or reused) buffer is copied
    a = contiguous(a)
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a)


def paddle_model(state_dict: Mapping, config: Config, device: str = "cpu", towers=HUB.TOWERS):
    """parity's Paddle CLIP in eval mode on `device` (cpu | gpu; Paddle's current device is set to it),
    `state_dict` (parity's Paddle layout, float32; arrays, or plans made one at a time) loaded strictly.
    `towers`: a one-tower model takes that tower's keys only."""
    paddle = import_paddle()
    paddle.set_device(device)
    from .paddle_clip import CLIP

    _complete(config)
    expected = PADDLE.LAYOUT.rows_for(config).layout_shapes(HUB.tower_shapes(config, towers))
    check_keys({k: v for k, v in state_dict.items() if k in expected} if set(towers) != set(HUB.TOWERS)
               else state_dict, expected, "paddle state dict")
    with paddle.LazyGuard():  # no random initialisation of parameters that are overwritten next (10 s for RN50x64)
        model = CLIP(config, towers)
    params = model.state_dict()
    wanted = {k: str(v.dtype).replace("paddle.", "") for k, v in params.items()}
    wrong = sorted(f"{k} {dtype_of(state_dict[k])} (model holds {wanted[k]})" for k in expected
                   if str(dtype_of(state_dict[k])) != wanted[k])
    if wrong:
        raise StateDictError("paddle state dict has tensors of the wrong dtype (Paddle computes float32 on "
                             "the CPU; convert with dtype='float32'): " + ", ".join(wrong))
    if sorted(params) != sorted(expected):  # cannot happen after check_keys; a lazy parameter must never stay unset
        raise StateDictError(f"Paddle's model and the layout disagree: {sorted(set(params) ^ set(expected))}")
    for key in expected:  # one tensor made at a time: numpy straight in, no paddle.to_tensor copy first
        params[key].set_value(contiguous(as_numpy(state_dict[key])))
    model.eval()
    return model
