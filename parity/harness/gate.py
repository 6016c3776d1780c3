"""The gate: what both frameworks' outputs are, how they are compared, and the bound each must meet.

For each compared output, element by element, |delta| <= max(atol + rtol * |reference|, NOISE_FACTOR *
float32 noise floor), the floor measured with parity's torch model in float64 on the same weights and
inputs; torch is the reference.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import towers as kinds
from ..models.frameworks import import_paddle

OUTPUTS = ("logits", "image_features", "text_features")
# a tower alone's outputs, by transformers' names: what diffusion pipelines and VLMs consume
TOWER_OUTPUTS = ("last_hidden_state", "penultimate_hidden_state", "pooled", "embeds")
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-5
NOISE_FACTOR = 4.0  # a framework difference within 4x float32's own noise is rounding, not a bug


@dataclass
class Outputs:
    logits: np.ndarray | None  # logits_per_image (None: one tower only)
    image_features: np.ndarray | None  # encode_image, before normalisation
    text_features: np.ndarray | None
    states: dict[str, np.ndarray] = field(default_factory=dict)  # a tower alone's TOWER_OUTPUTS

    def __getitem__(self, name: str) -> np.ndarray | None:
        return self.states.get(name) if name in TOWER_OUTPUTS else getattr(self, name)

    @property
    def feature(self) -> str:
        """A tower alone's feature vector: its embeds, or its pooled output where it has no projection."""
        return "embeds" if "embeds" in self.states else "pooled"

    @property
    def names(self) -> list[str]:
        return [n for n in (*OUTPUTS, *TOWER_OUTPUTS) if self[n] is not None]


def run_torch(model, image: np.ndarray, text: np.ndarray) -> Outputs:
    """Outputs of a torch CLIP, as float64 numpy; the image is cast to the model's dtype and device."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        img, txt = torch.from_numpy(image).to(device), torch.from_numpy(text).to(device)
        image_features, text_features = model.encode_image(img), model.encode_text(txt)
        logits, _ = model(img, txt)
    return Outputs(*(t.double().cpu().numpy() for t in (logits, image_features, text_features)))


def run_paddle(model, image: np.ndarray, text: np.ndarray) -> Outputs:
    """Outputs of a Paddle CLIP, as float64 numpy, on Paddle's current device."""
    paddle = import_paddle()
    with paddle.no_grad():
        img, txt = paddle.to_tensor(image), paddle.to_tensor(text)
        image_features, text_features = model.encode_image(img), model.encode_text(txt)
        logits, _ = model(img, txt)
    return Outputs(*(t.numpy().astype(np.float64) for t in (logits, image_features, text_features)))


@dataclass
class Difference:
    max_abs: float
    relative: float  # max |delta| / max |reference|
    cosine: float  # of the flattened tensors
    bound: float = float("nan")  # the allowed |delta| at the element nearest its bound
    bound_kind: str = ""  # "atol+rtol" or "noise": which term of the gate applied there
    passed: bool = True

    @classmethod
    def between(cls, ref, other, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                noise: float = 0.0, noise_factor: float = NOISE_FACTOR) -> "Difference":
        ref, other = np.asarray(ref, np.float64).ravel(), np.asarray(other, np.float64).ravel()
        delta = np.abs(ref - other)
        tolerance = atol + rtol * np.abs(ref)
        allowed = np.maximum(tolerance, noise_factor * noise)
        worst = int(np.argmax(delta / allowed)) if delta.size else 0
        max_abs = float(delta.max()) if delta.size else 0.0
        denom = float(np.linalg.norm(ref) * np.linalg.norm(other))
        return cls(max_abs, max_abs / max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 0.0,
                   float(ref @ other / denom) if denom else float("nan"), float(allowed[worst]),
                   "noise" if noise_factor * noise > tolerance[worst] else "atol+rtol",
                   bool(np.all(delta <= allowed)) and bool(np.all(np.isfinite(other)) == np.all(np.isfinite(ref))))


@dataclass
class PhotoFeature:
    """One feature (image or text) over a set of inputs (the photographs, the user's data): |Δ|, and each
    vector's cosine between the frameworks, gated at `bound`."""

    max_abs: float
    relative: float
    min_row_cosine: float
    bound: float
    passed: bool


def cosine_features(ref: Outputs, other: Outputs, names, min_cosine: float) -> dict[str, PhotoFeature]:
    """Each named feature over a set of inputs: |Δ| shown, each row's cosine between the frameworks gated."""
    found = {}
    for name in names:
        d = Difference.between(ref[name], other[name])
        cosines = row_cosines(ref[name], other[name])
        found[name] = PhotoFeature(d.max_abs, d.relative, float(cosines.min()), min_cosine,
                                   bool(cosines.min() >= min_cosine))
    return found


def similarity(out: Outputs) -> np.ndarray:
    """Cosine similarity of every image with every text, (images, texts)."""
    img = out.image_features / np.linalg.norm(out.image_features, axis=-1, keepdims=True)
    txt = out.text_features / np.linalg.norm(out.text_features, axis=-1, keepdims=True)
    return img @ txt.T


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row of `a` with the same row of `b`: their cosine."""
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def compare(ref: Outputs, other: Outputs, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            noise: dict | None = None, noise_factor: float = NOISE_FACTOR) -> dict[str, Difference]:
    noise = noise or {}
    return {name: Difference.between(ref[name], other[name], atol, rtol, noise.get(name, 0.0), noise_factor)
            for name in ref.names}


def _propagated_logit_noise(fp64: Outputs, fp32: Outputs, logit_scale: float) -> float:
    # A logit is scale * cos(image, text). A feature error of relative size r in a random direction moves
    # the cosine by about r / sqrt(dim) (its component along the other vector), so the float32 noise of
    # logit (i, j) has standard deviation scale * sqrt(r_i**2 + r_j**2) / sqrt(dim). The single measured
    # logit difference is one draw of that noise and, by cancellation, can be 30x smaller (RN50 seeds
    # 0-3: 1.2e-5 to 4e-4 with the same feature error), so it alone would understate the floor.
    def rel(name):  # per-row relative error norm
        a, b = fp32[name], fp64[name]
        return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
    r_img, r_txt = rel("image_features"), rel("text_features")
    dim = fp64.image_features.shape[-1]
    return float(logit_scale * np.sqrt(r_img[:, None] ** 2 + r_txt[None, :] ** 2).max() / np.sqrt(dim))


@contextmanager
def float64(model):
    """`model` computes in float64 inside the block, one residual block at a time: what lies outside the
    blocks is cast on entry, each block when it runs and back after, so a model takes its float32 size
    plus one block's float64 size (not twice its size); the arithmetic is that of `model.double()`.
    float32 -> float64 -> float32 is exact, so the model leaves as it came."""
    import torch
    from ..models.torch_clip import BLOCKS

    classes = tuple(BLOCKS[t.block] for t in kinds.of(model.config) if t is not None)  # each tower's residual block class
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    inside = {id(t) for b in blocks for t in (*b.parameters(), *b.buffers())}

    def outside(dtype):
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for t in store.values():
                    if t is not None and id(t) not in inside and t.is_floating_point():
                        t.data = t.data.to(dtype)

    def widen(module, _inputs):  # a hook returns None: anything else would replace the block's input
        module.to(torch.float64)

    def narrow(module, _inputs, _output):
        module.to(torch.float32)
    handles = [h for b in blocks for h in (b.register_forward_pre_hook(widen), b.register_forward_hook(narrow))]
    outside(torch.float64)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            b.to(torch.float32)
        outside(torch.float32)


def floor(fp32: Outputs, fp64: Outputs, logit_scale: float) -> dict[str, float]:
    """float32 rounding noise of each output: max |float64 - float32|; for the logits, the larger of that
    and the noise the measured feature error implies (see `_propagated_logit_noise`)."""
    out = {name: float(np.max(np.abs(fp64[name] - fp32[name]))) for name in fp32.names}
    if fp32.logits is not None:
        out["logits_measured"] = out["logits"]
        out["logits_propagated"] = _propagated_logit_noise(fp64, fp32, logit_scale)
        out["logits"] = max(out["logits_measured"], out["logits_propagated"])
    return out


def noise_floor(model, image: np.ndarray, text: np.ndarray, fp32: Outputs | None = None) -> dict[str, float]:
    """float32 rounding noise of each output: the same torch model on the same weights, float64 vs float32
    (`float64`, block by block). Features: max |float64 - float32|; logits: see `floor`."""
    fp32 = fp32 or run_torch(model, image, text)
    with float64(model):
        fp64 = run_torch(model, image.astype(np.float64), text)
        logit_scale = float(model.logit_scale.detach().exp())
    return floor(fp32, fp64, logit_scale)


# ---------------------------------------------------------------- layer diagnosis
