"""File-level API over the harness: ready-to-use models, one framework's logits, and verification of
one checkpoint (converted in memory for the other framework) or of a torch/Paddle pair of files."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, load
from .errors import ParityError
from .harness import DEFAULT_ATOL, DEFAULT_RTOL, run_paddle, run_torch, verify_pair
from .inputs import SAMPLES, canonical_inputs
from .tokenizer import VOCAB_SIZE, tokenize
from .loading import device_names, paddle_model, select_device, torch_model
from .variants import REFERENCE_LOGITS

FRAMEWORKS = ("torch", "paddle")
MAX_CONTEXT = 1024  # positions: attention memory grows with the square (a 2 MB file can claim 100,000)
MAX_RESOLUTION = 1024  # pixels a side: activations grow with the square


def computable(ck: Checkpoint, captions: bool = True) -> None:
    """ParityError, naming the file, where its shapes give a model that cannot run parity's inputs:
    a vocabulary short of the tokenizer's ids (with `captions`), captions longer than its context, or a
    context or image size beyond what a check needs (memory set by the file's claims, not its size)."""
    c = ck.config
    if c.context_length > MAX_CONTEXT or c.image_resolution > MAX_RESOLUTION:
        raise ParityError(f"{ck.path}: its shapes give a context of {c.context_length} tokens and images of "
                          f"{c.image_resolution} pixels a side; parity computes at most {MAX_CONTEXT} and "
                          f"{MAX_RESOLUTION} (memory grows with their squares)")
    if c.vocab_size < 2:
        raise ParityError(f"{ck.path}: its token embedding has {c.vocab_size} rows: no text can be encoded")
    if captions:
        if c.vocab_size < VOCAB_SIZE:
            raise ParityError(f"{ck.path}: its token embedding has {c.vocab_size} rows, but CLIP's tokenizer "
                              f"gives ids up to {VOCAB_SIZE - 1}: the captions cannot be encoded for it")
        longest = max(int(np.count_nonzero(tokenize(text, 10_000))) for text in SAMPLES.values())
        if c.context_length < longest:
            raise ParityError(f"{ck.path}: its context holds {c.context_length} tokens, and the captions "
                              f"need {longest}")


def weights_label(ck: Checkpoint) -> str:
    """'official RN50 release (sha256 afeb0e10f9e5…)' only when the file's own SHA-256 is the release's."""
    short = f"sha256 {ck.sha256[:12]}…" if ck.sha256 else "no hash"
    if ck.official:
        return f"official {ck.variant} release ({short})"
    return f"{short}, not an official release file"


def _float32(state: dict) -> dict:
    # Paddle computes float32 on a CPU; float16 -> float32 is exact
    return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype != np.float32 else v for k, v in state.items()}


def _provenance(ck: Checkpoint, converted_from: str | None = None) -> dict:
    src = {"path": str(ck.path), "format": ck.format, "sha256": ck.sha256, "layout": ck.layout,
           "official": ck.official}
    if converted_from:
        src["converted_in_memory_from"] = converted_from
    return src


def sides(first, second=None, variant: str | None = None):
    """(torch-layout state dict, Paddle-layout state dict, config, label, sources, reference logit or None)."""
    a = load(first, variant=variant)
    computable(a)
    if second is None:
        if a.layout == "torch":
            torch_ck, paddle_ck = a, a.in_layout("paddle")
            sources = {"torch": _provenance(a), "paddle": _provenance(a, "torch layout, through parity's key map")}
        else:
            torch_ck, paddle_ck = a.in_layout("torch"), a
            sources = {"torch": _provenance(a, "Paddle layout, through parity's key map"), "paddle": _provenance(a)}
        label, official = weights_label(a), a.official
    else:
        b = load(second, variant=variant)
        computable(b)
        if {a.layout, b.layout} != {"torch", "paddle"}:
            raise ParityError(f"{first} and {second} are both in the {a.layout} layout: give one torch "
                              "checkpoint and one Paddle checkpoint, or a single file to convert in memory")
        torch_ck, paddle_ck = (a, b) if a.layout == "torch" else (b, a)
        if torch_ck.config.architecture() != paddle_ck.config.architecture():
            raise ParityError(f"{torch_ck.path} is {torch_ck.variant or 'a custom CLIP'} but {paddle_ck.path} "
                              f"is {paddle_ck.variant or 'a custom CLIP'}: they cannot hold the same model")
        sources = {"torch": _provenance(torch_ck), "paddle": _provenance(paddle_ck)}
        label = f"torch file {weights_label(torch_ck)}; paddle file {weights_label(paddle_ck)}"
        official = torch_ck.official
    config = torch_ck.config
    reference = REFERENCE_LOGITS.get(config.name) if official else None
    return torch_ck.torch_state(), _float32(paddle_ck.state_dict), config, label, sources, reference


def verify(first, second=None, *, variant: str | None = None, device: str = "auto", atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, photos: bool = True, layers: bool = False) -> dict:
    """Verify one checkpoint (each framework gets it, converted in memory for the other) or a torch
    checkpoint against a Paddle one (each framework loads its own). Returns the report dict; its
    "passed" is the gate. Official files (by SHA-256) are also checked against the reference table.

    >>> parity.verify("RN50.pt")["passed"]                          # doctest: +SKIP
    True
    """
    torch_sd, paddle_sd, config, label, sources, reference = sides(first, second, variant)
    report = verify_pair(torch_sd, paddle_sd, config, weights=label, device=device, atol=atol, rtol=rtol,
                         photos=photos, layers=layers, reference=reference)
    report["sources"] = sources
    return report


def load_model(path, framework: str = "torch", device: str = "auto", variant: str | None = None):
    """parity's CLIP for `framework` ("torch" or "paddle") with the checkpoint's weights, in eval mode
    on `device` (auto: the GPU when present). Any supported file works for either framework.

    >>> model = parity.load_model("RN50.pt", framework="paddle")    # doctest: +SKIP
    """
    _check_framework(framework)
    ck = load(path, variant=variant)
    computable(ck, captions=False)
    return _model(ck, framework, select_device(device)[framework])


def _check_framework(framework: str) -> None:  # before any file is read
    if framework not in FRAMEWORKS:
        raise ParityError(f"unknown framework {framework!r}: use torch or paddle")


def _model(ck: Checkpoint, framework: str, where: str):
    if framework == "torch":
        return torch_model(ck.torch_state(), ck.config, device=where)
    return paddle_model(_float32(ck.in_layout("paddle").state_dict), ck.config, device=where)


def logits(path, framework: str = "torch", device: str = "auto", variant: str | None = None) -> dict:
    """The canonical pair through one framework's model: logit and both feature vectors."""
    _check_framework(framework)
    ck = load(path, variant=variant)
    computable(ck, captions=False)
    devices = select_device(device)
    model = _model(ck, framework, devices[framework])
    image, text = canonical_inputs(ck.config.image_resolution, ck.config.context_length)
    out = (run_torch if framework == "torch" else run_paddle)(model, image, text)
    del model
    gc.collect()
    return {"variant": ck.variant or "custom", "framework": framework, "device": device_names(devices)[framework],
            "weights": weights_label(ck), "file": str(Path(path)), "sha256": ck.sha256,
            "logit": float(out.logits.ravel()[0]), "image_features": out.image_features.ravel().tolist(),
            "text_features": out.text_features.ravel().tolist()}
