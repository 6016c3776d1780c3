"""Run both frameworks on the same inputs and compare what they compute."""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import keymap
from .inputs import canonical_inputs
from .loading import import_paddle, paddle_model, torch_model
from .variants import CLIPConfig, infer_config

OUTPUTS = ("logits", "image_features", "text_features")
DEFAULT_ATOL = 1e-4
NOISE_FACTOR = 4.0  # a framework difference within 4x float32's own noise is rounding, not a bug


@dataclass
class Outputs:
    logits: np.ndarray  # logits_per_image
    image_features: np.ndarray  # encode_image, before normalisation
    text_features: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)


def run_torch(model, image: np.ndarray, text: np.ndarray) -> Outputs:
    """Outputs of a torch CLIP, as float64 numpy; the image is cast to the model's dtype."""
    import torch

    with torch.no_grad():
        img, txt = torch.from_numpy(image), torch.from_numpy(text)
        image_features, text_features = model.encode_image(img), model.encode_text(txt)
        logits, _ = model(img, txt)
    return Outputs(*(t.double().numpy() for t in (logits, image_features, text_features)))


def run_paddle(model, image: np.ndarray, text: np.ndarray) -> Outputs:
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

    @classmethod
    def between(cls, ref: np.ndarray, other: np.ndarray) -> "Difference":
        ref, other = np.asarray(ref, np.float64).ravel(), np.asarray(other, np.float64).ravel()
        max_abs = float(np.max(np.abs(ref - other)))
        denom = float(np.linalg.norm(ref) * np.linalg.norm(other))
        return cls(max_abs, max_abs / max(float(np.max(np.abs(ref))), 1e-30),
                   float(ref @ other / denom) if denom else float("nan"))


def compare(ref: Outputs, other: Outputs) -> dict[str, Difference]:
    return {name: Difference.between(ref[name], other[name]) for name in OUTPUTS}


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


def noise_floor(model, image: np.ndarray, text: np.ndarray, fp32: Outputs | None = None) -> dict[str, float]:
    """float32 rounding noise of each output: the same torch model on the same weights, float64 vs float32.

    Features: max |float64 - float32|. Logits: the larger of that and the noise the measured feature
    error implies (see `_propagated_logit_noise`). The model is switched to float64 and back in place:
    float32 -> float64 -> float32 is exact.
    """
    fp32 = fp32 or run_torch(model, image, text)
    model.double()
    try:
        fp64 = run_torch(model, image.astype(np.float64), text)
        logit_scale = float(model.logit_scale.detach().exp())
    finally:
        model.float()
    floor = {name: float(np.max(np.abs(fp64[name] - fp32[name]))) for name in OUTPUTS}
    floor["logits_measured"] = floor["logits"]
    floor["logits_propagated"] = _propagated_logit_noise(fp64, fp32, logit_scale)
    floor["logits"] = max(floor["logits_measured"], floor["logits_propagated"])
    return floor


def bounds(noise: dict[str, float], atol: float = DEFAULT_ATOL) -> dict[str, tuple[float, str]]:
    """Per output: (bound, which applied) with bound = max(atol, NOISE_FACTOR x float32 noise floor)."""
    return {name: (atol, "atol") if atol >= NOISE_FACTOR * noise[name] else (NOISE_FACTOR * noise[name], "noise")
            for name in OUTPUTS}


@dataclass
class VariantResult:
    variant: str
    weights: str
    torch_logit: float
    paddle_logit: float
    logit_delta: float
    logit_bound: float
    bound_kind: str  # "atol" or "noise"
    noise_floor: dict[str, float]
    differences: dict[str, dict]
    feature_cosine: float
    passed: bool
    seconds: float
    devices: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def verify_state_dict(state_dict: dict, weights_label: str, config: CLIPConfig | None = None,
                      atol: float = DEFAULT_ATOL, min_cosine: float = 0.99999) -> VariantResult:
    """Official-layout weights through parity's torch and Paddle models on the canonical pair."""
    start = time.perf_counter()
    config = config or infer_config(state_dict)
    image, text = canonical_inputs(config.image_resolution, config.context_length)
    model = torch_model(state_dict, config)
    torch_out = run_torch(model, image, text)
    noise = noise_floor(model, image, text, torch_out)
    del model
    gc.collect()
    paddle_sd, _ = keymap.to_paddle(state_dict, config)
    model = paddle_model(paddle_sd, config)
    del paddle_sd
    paddle_out = run_paddle(model, image, text)
    del model
    gc.collect()
    diffs = compare(torch_out, paddle_out)
    limits = bounds(noise, atol)
    cosine = min(diffs["image_features"].cosine, diffs["text_features"].cosine)
    passed = all(diffs[n].max_abs <= limits[n][0] for n in OUTPUTS) and cosine >= min_cosine
    import torch
    paddle = import_paddle()
    return VariantResult(
        variant=config.name or "custom", weights=weights_label,
        torch_logit=float(torch_out.logits.ravel()[0]), paddle_logit=float(paddle_out.logits.ravel()[0]),
        logit_delta=diffs["logits"].max_abs, logit_bound=limits["logits"][0], bound_kind=limits["logits"][1],
        noise_floor=noise, differences={k: {**asdict(v), "bound": limits[k][0], "bound_kind": limits[k][1]}
                                        for k, v in diffs.items()}, feature_cosine=cosine, passed=passed,
        seconds=time.perf_counter() - start,
        devices={"torch": f"cpu, torch {torch.__version__}", "paddle": f"cpu, paddle {paddle.__version__}"})
