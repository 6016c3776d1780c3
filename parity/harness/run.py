"""Run both frameworks on the same inputs and compare what they compute.

One torch model and one Paddle model are alive at a time: each side is built, run on every input and
freed before the other. The gate for each compared output, element by element, is
|delta| <= max(atol + rtol * |reference|, NOISE_FACTOR * float32 noise floor), the floor measured with
parity's torch model in float64 on the same weights and inputs; torch is the reference.
"""
from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from .. import layouts
from .. import towers as kinds
from ..config import registry
from ..config.schema import Config
from .inputs import SampleSet, canonical_inputs, sample_set
from ..models.frameworks import device_names, import_paddle, select_device
from ..models.build import paddle_model, torch_model
from .report import LayerDiagnosis, PhotoFeature, Photos, ReferenceCheck, Report

OUTPUTS = ("logits", "image_features", "text_features")
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-5
NOISE_FACTOR = 4.0  # a framework difference within 4x float32's own noise is rounding, not a bug
TOP_K = 5
MIN_COSINE = 0.99999  # photographs: each feature vector's cosine between the frameworks


@dataclass
class Outputs:
    logits: np.ndarray | None  # logits_per_image (None: one tower only)
    image_features: np.ndarray | None  # encode_image, before normalisation
    text_features: np.ndarray | None

    def __getitem__(self, name: str) -> np.ndarray | None:
        return getattr(self, name)

    @property
    def names(self) -> list[str]:
        return [n for n in OUTPUTS if self[n] is not None]


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

    classes = tuple(BLOCKS[t.block] for t in kinds.of(model.config))  # each tower's residual block class
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
def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output  # torch's MultiheadAttention: (out, weights)


def _record_torch_layers(model, image: np.ndarray, text: np.ndarray, towers) -> tuple[list[str], dict, dict]:
    """Every module's float32 output on the canonical pair, and its float32 noise (float64 run)."""
    import torch

    order, outputs, noise = [], {}, {}

    def keep(name, _module, _inputs, output):
        out = _first(output)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            order.append(name)
            outputs[name] = out.detach().cpu().numpy().copy()  # a copy: in-place ReLUs overwrite their input

    def measure(name, _module, _inputs, output):
        out = _first(output)
        if name in outputs:
            noise[name] = float(np.max(np.abs(out.detach().cpu().numpy() - outputs[name])))

    device = next(model.parameters()).device

    def run(hook, dtype):
        handles = [m.register_forward_hook(lambda m, i, o, n=name: hook(n, m, i, o))
                   for name, m in model.named_modules() if name]
        try:
            with torch.no_grad():
                if "image" in towers:
                    model.encode_image(torch.from_numpy(image).to(device, dtype))
                if "text" in towers:
                    model.encode_text(torch.from_numpy(text).to(device))
        finally:
            for h in handles:
                h.remove()
    run(keep, torch.float32)
    with float64(model):
        run(measure, torch.float64)
    return order, outputs, noise


def _aligned(ref: np.ndarray, shape: tuple) -> np.ndarray | None:
    if ref.shape == shape:
        return ref
    if ref.ndim == 3 and ref.shape == (shape[1], shape[0], shape[2]):
        return ref.swapaxes(0, 1)  # torch's transformer is sequence-first [L, N, D], Paddle's batch-first [N, L, D]
    return None


def diagnose_layers(torch_sd: dict, paddle_sd: dict, config: Config, atol: float, rtol: float,
                    devices: dict[str, str] | None = None, noise_factor: float = NOISE_FACTOR,
                    towers=layouts.HUB.TOWERS, vocab_file=None) -> LayerDiagnosis:
    """Per module (same names in both models), on the canonical pair: max |delta|, cosine, bound, and the
    first module in execution order beyond its bound (its own float32 noise floor counts, as above).
    One tower of one framework is alive at a time. `devices`: each framework's device, as
    `select_device` gives them (default: the CPU)."""
    devices = devices or {"torch": "cpu", "paddle": "cpu"}
    image, text = canonical_inputs(config.vision.image_size, config.text.context_length, config.text.kind,
                                   vocab_file)
    paddle = import_paddle()
    rows: dict[str, dict] = {}
    order: list[str] = []
    for tower in towers:
        model = torch_model(torch_sd, config, device=devices["torch"], towers=(tower,))
        seen, outputs, noise = _record_torch_layers(model, image, text, (tower,))
        order += seen
        del model
        gc.collect()

        def compare_layer(name, _layer, _inputs, output):
            out = _first(output)
            if name not in outputs or not isinstance(out, paddle.Tensor):
                return
            got = out.numpy()
            ref = _aligned(outputs[name], tuple(got.shape))
            if ref is None:
                rows[name] = {"module": name, "note": f"shapes differ: torch {list(outputs[name].shape)}, "
                                                      f"paddle {list(got.shape)}"}
                return
            d = Difference.between(ref, got, atol, rtol, noise.get(name, 0.0), noise_factor)
            rows[name] = {"module": name, "shape": list(got.shape), **asdict(d), "noise_floor": noise.get(name, 0.0)}

        model = paddle_model(paddle_sd, config, device=devices["paddle"], towers=(tower,))
        handles = [layer.register_forward_post_hook(lambda l, i, o, n=name: compare_layer(n, l, i, o))
                   for name, layer in model.named_sublayers()]
        try:
            with paddle.no_grad():
                if tower == "image":
                    model.encode_image(paddle.to_tensor(image))
                else:
                    model.encode_text(paddle.to_tensor(text))
        finally:
            for h in handles:
                h.remove()
        del model
        outputs = {}  # the next tower's records replace these
        gc.collect()
    table = [rows[name] for name in dict.fromkeys(order) if name in rows]
    first = next((r["module"] for r in table if "passed" in r and not r["passed"]), None)
    return LayerDiagnosis(first_divergence=first, modules_compared=sum("passed" in r for r in table),
                          modules_torch_only=sorted(set(order) - set(rows)), table=table)


# ---------------------------------------------------------------- the two sides
@dataclass
class SideResult:
    canonical: Outputs
    photos: Outputs | None
    noise: dict | None = None  # float32 noise floor on the canonical pair
    seconds: float = 0.0


def _encode_torch(model, tower: str, x: np.ndarray, dtype=None):
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        t = torch.from_numpy(x if dtype is None else x.astype(dtype)).to(device)
        return model.encode_image(t) if tower == "image" else model.encode_text(t)


def _numpy(features: dict, logits=None) -> Outputs:
    def f64(t):
        return None if t is None else (t.double().cpu().numpy() if hasattr(t, "double") else
                                       t.numpy().astype(np.float64))
    return Outputs(f64(logits), f64(features.get("image")), f64(features.get("text")))


def torch_side(state_dict, config, image, text, photos: SampleSet | None, device: str,
               towers=layouts.HUB.TOWERS, noise: bool = True) -> SideResult:
    """parity's torch model, one tower at a time (each built, run and freed before the next): the
    canonical pair in float32 and, with `noise`, in float64 (its noise floor), and the photographs."""
    import torch

    start = time.perf_counter()
    inputs = {"image": image, "text": text}
    shots_in = {"image": photos.images, "text": photos.tokens} if photos else {}
    fp32, fp64, shots = {}, {}, {}
    logits32 = logits64 = None
    for tower in towers:
        model = torch_model(state_dict, config, device=device, towers=(tower,))
        fp32[tower] = _encode_torch(model, tower, inputs[tower])
        last = len(fp32) == 2
        with torch.no_grad():
            if last:  # the logits from both towers' features, by the same code as the whole model's forward
                logits32 = model.logits(fp32["image"], fp32["text"])[0]
            logit_scale = float(model.logit_scale.detach().exp())
        if noise:
            with torch.no_grad(), float64(model):
                fp64[tower] = _encode_torch(model, tower, inputs[tower], np.float64 if tower == "image" else None)
                if last:
                    logits64 = model.logits(fp64["image"], fp64["text"])[0]
        if photos:
            shots[tower] = _encode_torch(model, tower, shots_in[tower])
        del model
        gc.collect()
    canonical = _numpy(fp32, logits32)
    floors = floor(canonical, _numpy(fp64, logits64), logit_scale) if noise else None
    return SideResult(canonical, _numpy(shots) if photos else None, floors, time.perf_counter() - start)


def paddle_side(paddle_sd, config, image, text, photos: SampleSet | None, device: str,
                 towers=layouts.HUB.TOWERS) -> SideResult:
    """parity's Paddle model, one tower at a time: the canonical pair and the photographs."""
    paddle = import_paddle()
    start = time.perf_counter()
    inputs = {"image": image, "text": text}
    shots_in = {"image": photos.images, "text": photos.tokens} if photos else {}
    out, shots = {}, {}
    logits = None
    for tower in towers:
        model = paddle_model(paddle_sd, config, device=device, towers=(tower,))
        encode = model.encode_image if tower == "image" else model.encode_text
        with paddle.no_grad():
            out[tower] = encode(paddle.to_tensor(inputs[tower]))
            if photos:
                shots[tower] = encode(paddle.to_tensor(shots_in[tower]))
            if len(out) == 2:
                logits = model.logits(out["image"], out["text"])[0]
        del model
        gc.collect()
    return SideResult(_numpy(out, logits), _numpy(shots) if photos else None, seconds=time.perf_counter() - start)


def similarity(out: Outputs) -> np.ndarray:
    """Cosine similarity of every image with every text, (images, texts)."""
    img = out.image_features / np.linalg.norm(out.image_features, axis=-1, keepdims=True)
    txt = out.text_features / np.linalg.norm(out.text_features, axis=-1, keepdims=True)
    return img @ txt.T


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _photo_comparison(photos: SampleSet, t: Outputs, p: Outputs, min_cosine: float) -> Photos:
    # The float32 noise floor is measured on the canonical pair only (float64 convolutions of a batch of
    # photographs take minutes on a CPU), so the photographs are gated on what a user relies on: the same
    # best caption for every photograph, and every feature vector pointing the same way (cosine). With one
    # tower, there is no caption to choose: its feature vectors are gated.
    diffs = {}
    for name in t.names:
        d = Difference.between(t[name], p[name])
        cosines = _row_cosines(t[name], p[name])
        diffs[name] = PhotoFeature(d.max_abs, d.relative, float(cosines.min()), min_cosine,
                                   bool(cosines.min() >= min_cosine))
    if len(diffs) < 2:
        return Photos(photos.names, photos.captions, None, None, None, 0, None, None, diffs,
                      all(d.passed for d in diffs.values()))
    st, sp = similarity(t), similarity(p)
    k = min(TOP_K, st.shape[1])
    top_t, top_p = np.argsort(-st, axis=1)[:, :k], np.argsort(-sp, axis=1)[:, :k]
    argmax = top_t[:, 0] == top_p[:, 0]
    return Photos(photos.names, photos.captions, st.tolist(), sp.tolist(), float(np.mean(argmax)), k,
                  float(np.mean([list(a) == list(b) for a, b in zip(top_t, top_p)])), float(np.max(np.abs(st - sp))),
                  diffs, all(d.passed for d in diffs.values()) and bool(np.all(argmax)))


def verify_pair(torch_sd: Mapping, paddle_sd: Mapping, config: Config, *, weights: str = "unlabelled",
                device: str = "auto", atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                photos: bool = True, layers: bool = False, reference: float | None = None,
                min_cosine: float = MIN_COSINE, noise_factor: float = NOISE_FACTOR,
                towers=layouts.HUB.TOWERS, vocab_file=None) -> Report:
    """Compare parity's torch model on `torch_sd` (the hub layout) with parity's Paddle model on
    `paddle_sd` (parity's Paddle layout) on identical inputs; returns the Report. Tensors are arrays, or
    plans (`Planned`) made as each tower is built: one tower of one framework is alive at a time.

    `towers`: ("image", "text") compares the logits too; one tower, its features only.
    `reference`: the reference table's canonical logit for official weights, checked against torch's
    logit within `atol` plus the table's rounding (half a unit in the 4th decimal).
    `vocab_file`: a BERT's WordPiece vocabulary (a checkpoint folder's vocab.txt; else cn_clip's).
    Layer diagnosis runs with `layers` and whenever the outputs disagree.
    """
    start = time.perf_counter()
    towers = tuple(t for t in layouts.HUB.TOWERS if t in towers)
    devices = select_device(device)
    v, t_cfg = config.vision, config.text
    image, text = canonical_inputs(v.image_size, t_cfg.context_length, t_cfg.kind, vocab_file)
    shots = sample_set(v.image_size, t_cfg.context_length, text=t_cfg.kind, vocab_file=vocab_file) if photos else None
    t = torch_side(torch_sd, config, image, text, shots, devices["torch"], towers)
    p = paddle_side(paddle_sd, config, image, text, shots, devices["paddle"], towers)
    diffs = compare(t.canonical, p.canonical, atol, rtol, t.noise, noise_factor)
    logit = (lambda out: float(out.logits.ravel()[0])) if len(towers) == 2 else (lambda out: None)
    canonical = {"image": f"image ones/2 (1, 3, {v.image_size}, {v.image_size}) float32",
                 "text": kinds.text(config).canonical_label(t_cfg.context_length, vocab_file)}
    report = Report(
        variant=registry.name_of(config) or "custom", weights=weights, config=config.to_dict(),
        devices=device_names(devices), versions=versions(), atol=atol, rtol=rtol, noise_factor=noise_factor,
        inputs={"canonical": ", ".join(canonical[x] for x in towers), "photos": shots.names if shots else [],
                "towers": list(towers)},
        torch_logit=logit(t.canonical), paddle_logit=logit(p.canonical), noise_floor=t.noise, differences=diffs,
        feature_cosine=min(diffs[f"{x}_features"].cosine for x in towers),
        features={"torch": _features(t.canonical), "paddle": _features(p.canonical)},
        seconds_torch=t.seconds, seconds_paddle=p.seconds)
    passed = all(d.passed for d in diffs.values())
    if shots:
        report.photos = _photo_comparison(shots, t.photos, p.photos, min_cosine)
        passed = passed and report.photos.passed
    if reference is not None and len(towers) == 2:
        bound = atol + 5e-5  # the table gives 4 decimals
        torch_delta, paddle_delta = abs(report.torch_logit - reference), abs(report.paddle_logit - reference)
        report.reference = ReferenceCheck(reference, torch_delta, paddle_delta, bound,
                                          max(torch_delta, paddle_delta) <= bound)
        passed = passed and report.reference.passed
    if layers or not passed:
        report.layers = diagnose_layers(torch_sd, paddle_sd, config, atol, rtol, devices, noise_factor, towers,
                                        vocab_file)
    report.passed = passed
    report.seconds = time.perf_counter() - start
    return report


def _features(out: Outputs) -> dict:
    return {tower: out[f"{tower}_features"].ravel().tolist() for tower in layouts.HUB.TOWERS
            if out[f"{tower}_features"] is not None}


def versions() -> dict:
    import platform

    import torch

    from ..version import __version__
    paddle = import_paddle()
    return {"parity": __version__, "torch": torch.__version__, "paddle": paddle.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def verify_state_dict(state_dict: Mapping, weights: str, config: Config, **options) -> Report:
    """Hub-layout weights through parity's torch model and, through the Paddle layout's rows (each
    tensor made as its tower is built), its Paddle model."""
    plan, _ = layouts.rows.from_hub(state_dict, layouts.paddle.KEYMAP, "float32")
    return verify_pair(state_dict, plan, config, weights=weights, **options)
