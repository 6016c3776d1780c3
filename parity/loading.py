"""Build parity's models from state dicts, strictly: names, shapes and dtypes are checked before loading.

Paddle's `set_state_dict` is not strict (a missing key only warns, a mis-shaped one is skipped and the
random init kept, a float16 tensor for a float32 parameter raises halfway through), so nothing reaches
it before parity has checked the whole dict itself. A model is built only from a complete config.
"""
from __future__ import annotations

from typing import Mapping

from .config import Config
from .errors import ConfigMissingError
from .formats.source import contiguous
from .frameworks import import_paddle
from .layouts import HUB, StateDictError, check_keys
from .layouts import paddle as PADDLE
from .layouts.openai import ARCHIVE_ENTRIES
from .layouts.rows import as_numpy


def _complete(config: Config) -> Config:
    if not config.complete:
        raise ConfigMissingError(f"a model cannot be built without {', '.join(config.missing())}")
    return config


def torch_model(state_dict: Mapping, config: Config, dtype: str = "float32", device: str = "cpu"):
    """parity's torch CLIP in eval mode, `state_dict` (the hub layout, any dtype mix) loaded strictly.

    The official archives' int entries (`input_resolution`, ...) are accepted and dropped, as
    openai/CLIP's `build_model` does.
    """
    import torch
    from .models.torch_clip import CLIP

    _complete(config)
    check_keys(state_dict, HUB.shapes(config), "hub state dict", optional=ARCHIVE_ENTRIES)
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(contiguous(as_numpy(v)))
               for k, v in state_dict.items() if k not in ARCHIVE_ENTRIES}
    model = CLIP(config)
    model.load_state_dict(tensors, strict=True)  # copies into float32 parameters, casting half precision
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def paddle_model(state_dict: Mapping, config: Config, device: str = "cpu"):
    """parity's Paddle CLIP in eval mode on `device` (cpu | gpu; Paddle's current device is set to it),
    `state_dict` (parity's Paddle layout, float32) loaded strictly."""
    paddle = import_paddle()
    paddle.set_device(device)
    from .models.paddle_clip import CLIP

    _complete(config)
    check_keys(state_dict, PADDLE.KEYMAP.layout_shapes(HUB.shapes(config)), "paddle state dict")
    arrays = {k: as_numpy(v) for k, v in state_dict.items()}
    with paddle.LazyGuard():  # no random initialisation of parameters that are overwritten next (10 s for RN50x64)
        model = CLIP(config)
    wanted = {k: str(v.dtype).replace("paddle.", "") for k, v in model.state_dict().items()}
    wrong = sorted(f"{k} {a.dtype} (model holds {wanted[k]})" for k, a in arrays.items() if str(a.dtype) != wanted[k])
    if wrong:
        raise StateDictError("paddle state dict has tensors of the wrong dtype (Paddle computes float32 on "
                             "the CPU; convert with dtype='float32'): " + ", ".join(wrong))
    # numpy arrays go straight in: a paddle.to_tensor copy first would double the time
    missing, unexpected = model.set_state_dict({k: contiguous(a) for k, a in arrays.items()})
    if missing or unexpected:  # cannot happen after check_keys; a lazy parameter must never stay unset
        raise StateDictError(f"Paddle did not take every tensor: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model
