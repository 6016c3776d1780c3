"""Run both frameworks on the same inputs and compare what they compute.

One torch model and one Paddle model are alive at a time: each side is built, run on every input and
freed before the other. The gate for each compared output, element by element, is
|delta| <= max(atol + rtol * |reference|, NOISE_FACTOR * float32 noise floor), the floor measured with
parity's torch model in float64 on the same weights and inputs; torch is the reference.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .. import layouts
from .. import towers as kinds
from ..config import registry
from ..config.schema import Config
from .inputs import SampleSet, canonical_inputs, input_sizes, sample_set
from ..models.frameworks import device_names, import_paddle, select_device
from ..models.build import paddle_model, torch_model
from .gate import (DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR, Outputs, compare, cosine_features, float64, floor,
                   row_cosines, similarity)
from ..errors import ParityError
from . import floors
from .layers import diagnose_layers
from .search import compare_search, rank
from .report import Photos, ReferenceCheck, Report

TOP_K = 5
MIN_COSINE = 0.99999  # photographs: each feature vector's cosine between the frameworks


# ---------------------------------------------------------------- the two sides
@dataclass
class SideResult:
    canonical: Outputs
    photos: Outputs | None
    float64: Outputs | None = None  # the canonical pair in float64 (torch's side, where it ran)
    seconds: float = 0.0
    user: Outputs | None = None  # the user's images and captions (verify --images --texts)
    logit_scale: float | None = None


def _quiet(name: str) -> None:
    pass


def _user_batches(user, tower: str):
    """The user's set, a batch at a time, for `tower`."""
    return user.images.batches(user.batch, user.prepare) if tower == "image" else user.text_batches()


def _encode_torch(model, tower: str, x: np.ndarray, dtype=None, states: bool = False):
    """A tower's features; with `states`, a tower alone's outputs (`TOWER_OUTPUTS`) as a dict."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        t = torch.from_numpy(x if dtype is None else x.astype(dtype)).to(device)
        if states:
            return model.states(tower, t)
        return model.encode_image(t) if tower == "image" else model.encode_text(t)


def _encode_paddle(model, tower: str, x: np.ndarray, states: bool = False):
    paddle = import_paddle()
    t = paddle.to_tensor(x)
    if states:
        return model.states(tower, t)
    return model.encode_image(t) if tower == "image" else model.encode_text(t)


def _f64(t):
    if isinstance(t, np.ndarray):  # already gathered (the user's set, batch by batch)
        return t.astype(np.float64, copy=False)
    return None if t is None else (t.double().cpu().numpy() if hasattr(t, "double") else t.numpy().astype(np.float64))


def _numpy(features: dict, logits=None) -> Outputs:
    """Outputs from each tower's features, or a tower alone's outputs (a dict under its name)."""
    alone = next((v for v in features.values() if isinstance(v, dict)), None)
    if alone is not None:
        return Outputs(None, None, None, {k: _f64(v) for k, v in alone.items()})
    return Outputs(_f64(logits), _f64(features.get("image")), _f64(features.get("text")))


def torch_side(state_dict, config, image, text, photos: SampleSet | None, device: str,
               towers=layouts.HUB.TOWERS, noise: bool = True, user=None, stage=_quiet) -> SideResult:
    """parity's torch model, one tower at a time (each built, run and freed before the next): the
    canonical pair in float32 and, with `noise`, in float64 (its noise floor), and the photographs.
    `stage` is told each step as it starts."""
    import torch

    start = time.perf_counter()
    inputs = {"image": image, "text": text}
    shots_in = {"image": photos.images, "text": photos.tokens} if photos else {}
    fp32, fp64, shots, mine = {}, {}, {}, {}
    logits32 = logits64 = None
    alone = not config.whole  # a tower alone: its hidden states, pooled output and embeds
    logit_scale = None
    for tower in towers:
        stage(f"torch {tower} tower: canonical input")
        model = torch_model(state_dict, config, device=device, towers=(tower,))
        fp32[tower] = _encode_torch(model, tower, inputs[tower], states=alone)
        last = len(fp32) == 2
        with torch.no_grad():
            if last:  # the logits from both towers' features, by the same code as the whole model's forward
                logits32 = model.logits(fp32["image"], fp32["text"])[0]
            if not alone:
                logit_scale = float(model.logit_scale.detach().exp())
        if noise:
            stage(f"torch {tower} tower: float64 noise floor")
            with torch.no_grad(), float64(model):
                fp64[tower] = _encode_torch(model, tower, inputs[tower], np.float64 if tower == "image" else None,
                                            alone)
                if last:
                    logits64 = model.logits(fp64["image"], fp64["text"])[0]
        if photos:
            stage(f"torch {tower} tower: {len(photos.names)} photographs")
            shots[tower] = _encode_torch(model, tower, shots_in[tower])
        if user:
            stage(f"torch {tower} tower: your data")
            mine[tower] = np.concatenate([_f64(_encode_torch(model, tower, x)) for x in _user_batches(user, tower)])
        del model
        gc.collect()
    return SideResult(_numpy(fp32, logits32), _numpy(shots) if photos else None, _numpy(fp64, logits64) if noise else None,
                      time.perf_counter() - start, _numpy(mine) if user else None, logit_scale)


def paddle_side(paddle_sd, config, image, text, photos: SampleSet | None, device: str,
                 towers=layouts.HUB.TOWERS, user=None, stage=_quiet) -> SideResult:
    """parity's Paddle model, one tower at a time: the canonical pair and the photographs."""
    paddle = import_paddle()
    start = time.perf_counter()
    inputs = {"image": image, "text": text}
    shots_in = {"image": photos.images, "text": photos.tokens} if photos else {}
    out, shots, mine = {}, {}, {}
    logits = None
    for tower in towers:
        stage(f"paddle {tower} tower: canonical input")
        model = paddle_model(paddle_sd, config, device=device, towers=(tower,))
        with paddle.no_grad():
            out[tower] = _encode_paddle(model, tower, inputs[tower], states=not config.whole)
            if photos:
                stage(f"paddle {tower} tower: {len(photos.names)} photographs")
                shots[tower] = _encode_paddle(model, tower, shots_in[tower])
            if user:
                stage(f"paddle {tower} tower: your data")
                mine[tower] = np.concatenate([_f64(_encode_paddle(model, tower, x)) for x in _user_batches(user, tower)])
            if len(out) == 2:
                logits = model.logits(out["image"], out["text"])[0]
        del model
        gc.collect()
    return SideResult(_numpy(out, logits), _numpy(shots) if photos else None, seconds=time.perf_counter() - start,
                      user=_numpy(mine) if user else None)


def _photo_comparison(photos: SampleSet, t: Outputs, p: Outputs, min_cosine: float) -> Photos:
    # The float32 noise floor is measured on the canonical pair only (float64 convolutions of a batch of
    # photographs take minutes on a CPU), so the photographs are gated on what a user relies on: the same
    # best caption for every photograph, and every feature vector pointing the same way (cosine). With one
    # tower, there is no caption to choose: its feature vectors are gated.
    diffs = cosine_features(t, p, t.names, min_cosine)
    if len(diffs) < 2:
        return Photos(photos.names, photos.captions, None, None, None, 0, None, None, diffs,
                      all(d.passed for d in diffs.values()))
    st, sp = similarity(t), similarity(p)
    ranked = rank("image->text", st, sp, photos.names, TOP_K)  # each photograph ranks the captions
    return Photos(photos.names, photos.captions, st.tolist(), sp.tolist(), ranked.top1_agreement, ranked.top_k,
                  ranked.topk_agreement, float(np.max(np.abs(st - sp))), diffs,
                  all(d.passed for d in diffs.values()) and ranked.passed)


def _torch_and_floor(torch_sd, config, image, text, shots, device: str, towers, user, quick: bool,
                     stage) -> tuple[SideResult, dict | None]:
    """torch's side and the float32 noise floor of its canonical outputs: None when `quick`; else from
    float64 outputs kept by an earlier run on the same weights, inputs and code, or measured (and kept)."""
    kept = None if quick else floors.key(torch_sd, config, image, text, towers, device)
    known = floors.load(kept)
    t = torch_side(torch_sd, config, image, text, shots, device, towers, not quick and known is None, user, stage)
    if t.float64 is not None:
        floors.store(kept, t.float64)
    return t, None if quick else floor(t.canonical, known or t.float64, t.logit_scale)


def verify_pair(torch_sd: Mapping, paddle_sd: Mapping, config: Config, *, weights: str = "unlabelled",
                device: str = "auto", atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                photos: bool = True, layers: bool = False, reference: float | None = None,
                min_cosine: float = MIN_COSINE, noise_factor: float = NOISE_FACTOR,
                towers=layouts.HUB.TOWERS, vocab_file=None, outputs=None, user=None, quick: bool = False,
                stage=None) -> Report:
    """Compare parity's torch model on `torch_sd` (the hub layout) with parity's Paddle model on
    `paddle_sd` (parity's Paddle layout) on identical inputs; returns the Report. Tensors are arrays, or
    plans (`Planned`) made as each tower is built: one tower of one framework is alive at a time.

    `towers`: ("image", "text") compares the logits too; one tower, its features only.
    `reference`: the reference table's canonical logit for official weights, checked against torch's
    logit within `atol` plus the table's rounding (half a unit in the 4th decimal).
    `vocab_file`: a BERT's WordPiece vocabulary (a checkpoint folder's vocab.txt; else cn_clip's).
    A tower alone (a tower-only config) is compared on its last and penultimate hidden states, every
    token, its pooled output and its embeds; `outputs` names those that gate the verdict (None: all).
    `user`: the user's images and captions (search.UserSet), compared in place of the photographs, with
    text -> image and image -> text search. Layer diagnosis runs with `layers` and whenever the outputs
    disagree. `quick`: no float64 pass (the bound is atol + rtol·|x| alone); otherwise the floor's float64
    outputs come from `floors` where an earlier run kept them. `stage` hears each step as it starts.
    """
    start, stage = time.perf_counter(), stage or _quiet
    towers = tuple(t for t in layouts.HUB.TOWERS if t in towers and t in config.towers)
    # the photographs' captions need a tokenizer: SigLIP's is its folder's spiece.model, which synthetic weights lack
    photos = photos and user is None and (config.text is None or kinds.text(config).tokenizes(vocab_file))
    devices = select_device(device)
    resolution, context, kind = input_sizes(config)
    image, text = canonical_inputs(resolution, context, kind, vocab_file)
    shots = sample_set(resolution, context, text=kind, vocab_file=vocab_file) if photos else None
    t, noise = _torch_and_floor(torch_sd, config, image, text, shots, devices["torch"], towers, user, quick, stage)
    p = paddle_side(paddle_sd, config, image, text, shots, devices["paddle"], towers, user, stage)
    diffs = compare(t.canonical, p.canonical, atol, rtol, noise, noise_factor)
    gated = gated_outputs(diffs, outputs)
    logit = (lambda out: float(out.logits.ravel()[0])) if len(towers) == 2 else (lambda out: None)
    report = Report(
        variant=registry.name_of(config) or "custom", weights=weights, config=config.to_dict(),
        devices=device_names(devices), versions=versions(), atol=atol, rtol=rtol, noise_factor=noise_factor,
        inputs=_inputs(resolution, context, kind, vocab_file, towers, shots),
        torch_logit=logit(t.canonical), paddle_logit=logit(p.canonical), noise_floor=noise, differences=diffs,
        feature_cosine=min(diffs[f"{x}_features" if config.whole else t.canonical.feature].cosine for x in towers),
        features={"torch": _features(t.canonical), "paddle": _features(p.canonical)},
        seconds_torch=t.seconds, seconds_paddle=p.seconds, gated=gated,
        loss=kinds.text(config).logits if config.whole else "softmax")
    passed = all(diffs[name].passed for name in gated)
    if shots:
        report.photos = _photo_comparison(shots, t.photos, p.photos, min_cosine)
        passed = passed and report.photos.passed
    if user is not None:
        report.search = compare_search(user, t.user, p.user, min_cosine, TOP_K)
        passed = passed and report.search.passed
    if reference is not None and len(towers) == 2:
        report.reference = reference_check(report, reference, atol)
        passed = passed and report.reference.passed
    if layers or not passed:  # on the pair that parts the frameworks
        stage("layer diagnosis")
        report.layers = diagnose_layers(torch_sd, paddle_sd, config, atol, rtol, devices, noise_factor, towers,
                                        vocab_file, _worst_pair(config, shots, user, t, p, report))
    report.passed, report.quick = passed, quick
    report.seconds = time.perf_counter() - start
    return report


def _worst_pair(config: Config, shots: SampleSet | None, user, t: SideResult, p: SideResult,
                report: Report) -> tuple | None:
    """Where the canonical pair's gated outputs agree and the photographs or the user's set do not, that
    set's (image, tokens, what they are) whose features part the frameworks most (least cosine): a
    diagnosis on the canonical pair would find nothing. Otherwise None (the canonical pair)."""
    found = report.search if user is not None else report.photos
    ours, theirs = (t.user, p.user) if user is not None else (t.photos, p.photos)
    if found is None or found.passed or not config.whole or \
            not all(report.differences[n].passed for n in report.gated):
        return None
    i, k = (int(np.argmin(row_cosines(ours[n], theirs[n]))) for n in ("image_features", "text_features"))
    if user is not None:
        return (user.images.one(i, user.prepare), user.tokens[k:k + 1],
                f"your image {user.images.names[i]!r} and caption #{k + 1}")
    return shots.images[i:i + 1], shots.tokens[k:k + 1], f"the photograph {shots.names[i]} and caption #{k + 1}"


def _inputs(resolution: int, context: int, kind: str, vocab_file, towers, shots: SampleSet | None) -> dict:
    """The report's description of the inputs."""
    canonical = {"image": f"image ones/2 (1, 3, {resolution}, {resolution}) float32",
                 "text": kinds.get("text", kind).canonical_label(context, vocab_file)}
    return {"canonical": ", ".join(canonical[x] for x in towers), "photos": shots.names if shots else [],
            "towers": list(towers)}


def reference_check(report: Report, reference: float, atol: float) -> ReferenceCheck:
    """Both frameworks' canonical logit against the reference table's, within `atol` and its rounding."""
    bound = atol + 5e-5  # the table gives 4 decimals
    torch_delta, paddle_delta = abs(report.torch_logit - reference), abs(report.paddle_logit - reference)
    return ReferenceCheck(reference, torch_delta, paddle_delta, bound, max(torch_delta, paddle_delta) <= bound)


def gated_outputs(diffs: dict, outputs=None) -> list[str]:
    """The compared outputs that gate the verdict: `outputs` (ParityError naming any not compared), else all."""
    if outputs is None:
        return list(diffs)
    unknown = [name for name in outputs if name not in diffs]
    if unknown or not outputs:
        raise ParityError(f"cannot gate on {', '.join(unknown) or 'no output'}: this check compares "
                          f"{', '.join(diffs)}")
    return list(dict.fromkeys(outputs))


def _features(out: Outputs) -> dict:
    if out.states:  # a tower alone: its feature vector
        return {out.feature: out[out.feature].ravel().tolist()}
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
    plan, _ = layouts.rows.from_hub(state_dict, layouts.paddle.LAYOUT.rows_for(config), "float32")
    return verify_pair(state_dict, plan, config, weights=weights, **options)
