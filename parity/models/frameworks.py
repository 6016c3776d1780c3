"""torch, Paddle and onnxruntime, imported in one place: Paddle's import-time quirks, threads and devices.

Nothing else in parity imports `paddle` itself; torch is imported where it is used (reading and
converting need neither framework).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings

from ..errors import MissingExtraError, NoDeviceError, ParityError


MKL_AVX2 = "5"  # MKL_DEBUG_CPU_TYPE's value for "take the AVX2 code path"


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...) where Linux says it, else ""."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            head = f.read(4096)  # /proc files have no size: a fixed prefix, which holds the first CPU's vendor
    except OSError:
        return ""
    line = next((x for x in head.decode("ascii", "replace").splitlines() if x.startswith("vendor_id")), "")
    return line.partition(":")[2].strip()


def mkl_path_for_this_cpu() -> None:
    """Paddle's CPU wheels bundle an MKL (mklml, before 2020.1) that takes its slowest GEMM path on any CPU
    not made by Intel: on an AMD EPYC (AVX2, FMA) a 2048² float32 GEMM ran at 66 GFLOPS in Paddle against
    175 in numpy and torch, and Paddle's CLIP forward at 2.3-2.7x torch's. That MKL reads
    MKL_DEBUG_CPU_TYPE=5 as "take the AVX2 path" (175 GFLOPS). Set before Paddle loads MKL, on an AMD CPU
    with AVX2 and FMA, unless the user has set it; Intel CPUs and newer MKLs are left alone."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ or cpu_vendor() != "AuthenticAMD":
        return
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 and numpy 1
    features = core._multiarray_umath.__cpu_features__
    if features.get("AVX2") and features.get("FMA3"):
        os.environ["MKL_DEBUG_CPU_TYPE"] = MKL_AVX2


def import_paddle():
    """`import paddle` without its import-time chatter (a "No ccache found" warning), computing on every
    CPU this process may use, as torch does, with its MKL's fast path on AMD CPUs (`mkl_path_for_this_cpu`)."""
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    mkl_path_for_this_cpu()
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


def import_onnxruntime():
    """onnxruntime (the `export` extra), or a ParityError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ParityError("ONNX needs onnxruntime, onnx and onnxscript: pip install 'parity[export]'") from None
    return onnxruntime


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
            raise NoDeviceError(f"device gpu: no GPU for {lacking}: install the CUDA builds (e.g. the `gpu` "
                                "extra for paddlepaddle-gpu)")
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


# what each extra brings that a command needs, by importable module (found without importing it), and the
# package of those whose names differ
PACKAGES = {"paddle": "paddlepaddle", "PIL": "Pillow", "skimage": "scikit-image", "google.protobuf": "protobuf"}
EXTRAS = {
    "torch": ("torch",),
    "paddle": ("paddle",),
    "verify": ("torch", "paddle", "PIL", "skimage", "matplotlib", "sentencepiece", "google.protobuf"),
    "export": ("onnx", "onnxscript", "onnxruntime"),
}


def require(extra: str, what: str) -> None:
    """MissingExtraError (bad input: exit 2) naming `extra` where a module it brings is not installed;
    `what` says what needs it ("verify", "the torch model")."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(PACKAGES.get(m, m) for m in missing)}, not installed here: "
                                f"pip install 'parity[{extra}]'" + ("" if extra != "verify" else
                                                                    " (on a GPU: 'parity[verify-gpu]')"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing ("google" for google.protobuf)
        return False
