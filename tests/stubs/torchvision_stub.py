"""A test-only stand-in for `torchvision`, which open_clip 3.3.0 and timm 1.0.31 import at module level.

Why it is here: open_clip is the oracle of the open_clip tests, and the only torchvision wheel for
torch 2.13 on this machine is a CUDA build that fails on import on a CPU. open_clip's models never call
torchvision; only its image transforms, datasets and timm's frozen BatchNorm are imported by name. So
each name here is a placeholder that fails loudly if it is ever called, except the two that open_clip
reads at import time: `InterpolationMode` (an enum) and `ops.misc.FrozenBatchNorm2d` (a class to
subclass-check against). `install()` registers the modules in sys.modules; parity never imports it.
"""
import enum
import importlib.machinery
import sys
import types


class _Unavailable:
    """A torchvision name that the stub does not provide: using it is an error, not a silent no-op."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is torchvision's; the test stub does not provide it")


def install():
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    import torch

    def module(name, **names):
        made = types.ModuleType(name)
        made.__dict__.update(names)
        made.__path__ = []  # a package, so that `import torchvision.x.y` finds the modules below
        # a spec, as a real module has: transformers probes find_spec("torchvision") (and, finding no
        # installed distribution, treats it as absent)
        made.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = made
        return made

    def placeholders(*names):
        return {n: type(n, (_Unavailable,), {}) for n in names}

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        NEAREST_EXACT = "nearest-exact"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"
        BOX = "box"
        HAMMING = "hamming"
        LANCZOS = "lanczos"

    class FrozenBatchNorm2d(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("FrozenBatchNorm2d is torchvision's; the test stub does not provide it")

    transforms_names = placeholders("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
                                    "ColorJitter", "Grayscale", "RandomCrop", "RandomHorizontalFlip", "Lambda")
    functional = module("torchvision.transforms.functional", InterpolationMode=InterpolationMode,
                        **placeholders("resize", "center_crop", "pad", "to_tensor", "normalize", "crop",
                                       "get_dimensions", "to_grayscale"))
    transforms = module("torchvision.transforms", functional=functional, InterpolationMode=InterpolationMode,
                        **transforms_names)
    misc = module("torchvision.ops.misc", FrozenBatchNorm2d=FrozenBatchNorm2d)
    ops = module("torchvision.ops", misc=misc)
    datasets = module("torchvision.datasets", **placeholders(
        "CIFAR100", "CIFAR10", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder", "ImageNet", "INaturalist",
        "Places365", "QMNIST"))
    utils = module("torchvision.utils", **placeholders("save_image"))
    return module("torchvision", transforms=transforms, ops=ops, datasets=datasets, utils=utils,
                  __version__="0.0.0+parity-test-stub")
