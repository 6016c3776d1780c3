"""Build parity's models from state dicts, strictly: names, shapes and dtypes are checked before loading.

Paddle's `set_state_dict` is not strict (a missing key only warns, a mis-shaped one is skipped and the
random init kept, a float16 tensor for a float32 parameter raises halfway through), so nothing reaches
it before parity has checked the whole dict itself.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping


from .errors import ParityError
from .keymap import ARCHIVE_ENTRIES, StateDictError, as_numpy, check_keys, paddle_shapes, torch_shapes
from .variants import CLIPConfig, infer_config
from .formats.source import contiguous


def import_paddle():
    """`import paddle` without its import-time chatter (a "No ccache found" warning), computing on every
    CPU this process may use, as torch does."""
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    threads_set = "OMP_NUM_THREADS" in os.environ
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddle
    if not threads_set:
        # Paddle pins its CPU kernels to one thread by writing OMP_NUM_THREADS=1 into the environment
        # (half the speed on 2 cores, and a torch imported later would read it too): undo both
        os.environ.pop("OMP_NUM_THREADS", None)
        set_threads = getattr(getattr(getattr(paddle, "base", None), "core", None), "set_num_threads", None)
        if set_threads is not None:
            set_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return paddle


def select_device(device: str = "auto") -> dict[str, str]:
    """Each framework's device for `device` = auto | cpu | gpu: auto takes the GPU when both frameworks
    have one. On a GPU, TF32 is switched off in both, so that float32 means float32."""
    if device not in ("auto", "cpu", "gpu"):
        raise ParityError(f"unknown device {device!r}: use auto, cpu or gpu")
    if device == "cpu":
        return {"torch": "cpu", "paddle": "cpu"}
    import torch
    paddle = import_paddle()
    have = {"torch": torch.cuda.is_available(),
            "paddle": paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0}
    if not all(have.values()):
        if device == "gpu":
            lacking = " and ".join(k for k, v in have.items() if not v)
            raise ParityError(f"--device gpu: no GPU for {lacking} (install the CUDA builds, e.g. the "
                              "`gpu` extra for paddlepaddle-gpu), or use --device cpu")
        return {"torch": "cpu", "paddle": "cpu"}
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")  # Paddle's cuBLAS/cuDNN: no TF32 matmuls or convs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"torch": "cuda", "paddle": "gpu"}


def device_names(devices: dict[str, str]) -> dict[str, str]:
    """Human names of the devices used, e.g. {'torch': 'cpu', 'paddle': 'gpu (NVIDIA H200)'}."""
    names = dict(devices)
    if devices.get("torch") == "cuda":
        import torch
        names["torch"] = f"cuda ({torch.cuda.get_device_name(0)})"
    if devices.get("paddle") == "gpu":
        paddle = import_paddle()
        names["paddle"] = f"gpu ({paddle.device.cuda.get_device_name(0)})"
    return names


def torch_model(state_dict: Mapping, config: CLIPConfig | None = None, dtype: str = "float32",
                device: str = "cpu"):
    """parity's torch CLIP in eval mode, `state_dict` (official layout, any dtype mix) loaded strictly.

    The official archives' int entries (`input_resolution`, ...) are accepted and dropped, as
    openai/CLIP's `build_model` does.
    """
    import torch
    from .models.torch_clip import CLIP

    config = config or infer_config(state_dict)
    check_keys(state_dict, torch_shapes(config), "torch state dict", optional=ARCHIVE_ENTRIES)
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(contiguous(as_numpy(v)))
               for k, v in state_dict.items() if k not in ARCHIVE_ENTRIES}
    model = CLIP(config)
    model.load_state_dict(tensors, strict=True)  # copies into float32 parameters, casting half precision
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def paddle_model(state_dict: Mapping, config: CLIPConfig | None = None, device: str = "cpu"):
    """parity's Paddle CLIP in eval mode on `device` (cpu | gpu; Paddle's current device is set to it),
    `state_dict` (parity's Paddle layout, float32) loaded strictly."""
    paddle = import_paddle()
    paddle.set_device(device)
    from .models.paddle_clip import CLIP

    config = config or infer_config(state_dict)
    check_keys(state_dict, paddle_shapes(config), "paddle state dict")
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
