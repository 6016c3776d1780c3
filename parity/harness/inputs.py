"""Inputs fed identically to both frameworks: the canonical pair, sample photographs with captions, and
CLIP's image preprocessing, framework-neutral (numpy + Pillow).

The preprocessing is openai/CLIP's `_transform` (torchvision `Resize(R, BICUBIC)`, `CenterCrop(R)`,
RGB, `ToTensor`, `Normalize`) written out step by step, since torchvision does not work beside torch 2.13.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import towers

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# scikit-image's sample photographs, as in CLIP's own zero-shot notebook, each with its caption (each text
# tower has its captions for the same photographs)
SAMPLES = towers.get("text", "clip").captions


def canonical_inputs(resolution: int, context_length: int = 77, text: str = "clip",
                     vocab_file=None) -> tuple[np.ndarray, np.ndarray]:
    """The reference table's pair: image = ones/2 of shape (1, 3, R, R) float32, text = ones (1, 77) int64
    for CLIP's text tower; for another text tower kind (`text`), that tower's canonical text (a BERT's:
    "一张照片" by Chinese-CLIP's tokenizer, over `vocab_file`, else the installed cn_clip's vocabulary)."""
    image = np.full((1, 3, resolution, resolution), 0.5, dtype=np.float32)
    return image, towers.get("text", text).canonical(context_length, vocab_file)


def input_sizes(config) -> tuple[int, int, str]:
    """(image size, context length, text tower kind) of a config's inputs; a tower alone gets the other
    tower's defaults (224 pixels; CLIP's 77 BPE tokens), which it never computes on."""
    resolution = config.vision.image_size if config.vision is not None else 224
    context, kind = (config.text.context_length, config.text.kind) if config.text is not None else (77, "clip")
    return resolution, context, kind


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(size)`: the shorter side becomes `size`, the longer `int(size * long / short)`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop(size)` as a PIL box (left, top, right, bottom): offsets rounded half to even."""
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def preprocess(image, resolution: int = 224, spec: dict | None = None) -> np.ndarray:
    """One image (a path or a PIL image) as CLIP sees it: float32 array of shape (3, R, R).

    Shorter side to R by PIL bicubic resampling, centre crop R x R, RGB, /255, minus CLIP's mean, over
    its std. Stack the results for a batch: `np.stack([preprocess(p, 224) for p in paths])`. `spec`: a text
    tower's `image_preprocessing(R)` where its family differs (SigLIP's: straight to R x R, bicubic, no
    crop, mean and std 0.5).
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.copy()
    if image.size[0] < 1 or image.size[1] < 1:
        raise ValueError(f"an image of size {image.size} cannot be preprocessed")
    width, height = image.size
    squash = spec is not None and spec.get("center_crop") is None  # straight to R x R, the aspect ratio lost
    new = (resolution, resolution) if squash else resized_size(width, height, resolution)
    if new != (width, height):
        image = image.resize(new, Image.BICUBIC)
    image = (image if squash else image.crop(crop_box(*new, resolution))).convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)  # (R, R, 3) in [0, 1]
    pixels = pixels.transpose(2, 0, 1)  # (R, R, 3) -> (3, R, R)
    mean, std = (np.asarray((spec or {}).get(k, default), np.float32) for k, default in (("mean", MEAN), ("std", STD)))
    return ((pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def sample_dir() -> Path:
    """scikit-image's data folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sample photographs come with scikit-image: `pip install scikit-image`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_path(name: str) -> Path:
    folder = sample_dir()
    for suffix in (".png", ".jpg"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise FileNotFoundError(f"sample photograph {name!r} is not in {folder}")


@dataclass
class SampleSet:
    names: list[str]
    captions: list[str]
    images: np.ndarray  # (N, 3, R, R) float32, preprocessed
    tokens: np.ndarray  # (N, context_length) int64


def sample_set(resolution: int, context_length: int = 77, names: Sequence[str] | None = None,
               text: str = "clip", vocab_file=None) -> SampleSet:
    """The sample photographs preprocessed once at `resolution`, and their captions (those of the text
    tower of kind `text`) tokenized once by that tower's tokenizer."""
    tower = towers.get("text", text)
    names = list(names or SAMPLES)
    captions = [tower.captions[n] for n in names]
    spec = tower.image_preprocessing(resolution) if tower.family != "clip" else None  # SigLIP's own
    images = np.stack([preprocess(sample_path(n), resolution, spec) for n in names])
    return SampleSet(names, captions, images, tower.tokenize(captions, context_length, vocab_file))
