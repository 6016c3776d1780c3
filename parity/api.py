"""File-level API over the harness: ready-to-use models, one framework's logits, and verification of
one checkpoint (converted in memory for the other framework) or of a torch/Paddle pair of files."""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


from . import layouts
from . import towers as kinds
from .config import registry
from .config.schema import Config, a_tower
from .text import bpe
from .io.checkpoint import Checkpoint, opened
from .errors import ParityError
from .models.frameworks import device_names, require, select_device
from .harness.gate import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR
from .harness.run import paddle_side, torch_side, verify_pair
from .harness.inputs import canonical_inputs, input_sizes
from .models.build import paddle_model, torch_model
from .harness.report import Report
from .harness.search import user_set

FRAMEWORKS = ("torch", "paddle")
MAX_CONTEXT = 1024  # positions: attention memory grows with the square (a 2 MB file can claim 100,000)
MAX_RESOLUTION = 1024  # pixels a side: activations grow with the square


def computable(ck: Checkpoint, captions: bool = True, vocab_file=None) -> None:
    """ParityError, naming the file, where its shapes give a model that cannot run parity's inputs:
    a vocabulary short of the tokenizer's ids (with `captions`), captions longer than its context, or a
    context or image size beyond what a check needs (memory set by the file's claims, not its size).
    `vocab_file`: the text tower's vocabulary where the checkpoint has none beside it (a pair's other file's)."""
    ck.require_config()
    t, v = ck.config.text, ck.config.vision
    context = t.context_length if t is not None else 0
    resolution = v.image_size if v is not None else 0
    if context > MAX_CONTEXT or resolution > MAX_RESOLUTION:
        raise ParityError(f"its shapes give a context of {context} tokens and images of "
                          f"{resolution} pixels a side; parity computes at most {MAX_CONTEXT} and "
                          f"{MAX_RESOLUTION} (memory grows with their squares)", path=ck.path)
    if t is None:
        return
    if t.vocab_size < 2:
        raise ParityError(f"its token embedding has {t.vocab_size} rows: no text can be encoded", path=ck.path)
    problem = kinds.text(t).computable(t, vocab_file or ck.vocab_file, captions)
    if problem:
        raise ParityError(f"{problem}", path=ck.path)


def towers_for(config: Config, towers) -> tuple[str, ...]:
    """The towers to run: those asked for; for a tower alone, that tower (ParityError where only the
    other was asked for)."""
    if config.whole:
        return tuple(towers)
    if not set(config.towers) & set(towers):
        (have,), (asked,) = config.towers, tuple(towers)
        raise ParityError(f"this model is {a_tower(have)} alone: it has no {asked} tower to run")
    return config.towers


def weights_label(ck: Checkpoint) -> str:
    """'official RN50 release (sha256 afeb0e10f9e5…)' only when the file's own SHA-256 is the release's."""
    short = f"sha256 {ck.sha256[:12]}…" if ck.sha256 else "no hash"
    if ck.official:
        return f"official {ck.name} release ({short})"
    return f"{short}, not an official release file"


def _provenance(ck: Checkpoint, converted_from: str | None = None) -> dict:
    src = {"path": str(ck.path), "format": ck.format, "sha256": ck.sha256, "layout": ck.layout,
           "official": ck.official}
    if converted_from:
        src["converted_in_memory_from"] = converted_from
    return src


def _framework(ck: Checkpoint) -> str:
    return layouts.get(ck.layout).framework


@dataclass(frozen=True)
class Sides:
    """What each framework computes from, and what a report says of it (see `sides`)."""

    torch_plan: Mapping  # the hub layout's plan
    paddle_plan: Mapping  # the Paddle layout's plan, float32
    config: Config
    label: str  # the weights' label: official or not, by SHA-256
    sources: dict  # each framework's file: path, format, SHA-256, layout
    reference: float | None  # the reference table's logit, for an official release file
    vocab_file: Path | None  # a BERT's vocabulary file
    photos: bool = True  # whether the photographs' captions can be tokenized (SigLIP's need its spiece.model)


def sides(stack: ExitStack, first, second=None, config=None, towers=layouts.HUB.TOWERS, photos=True) -> Sides:
    """Each framework's plan and what a report says of them: each tensor is read when a model of its
    tower is built, from files that `stack` holds open. `photos`: whether the captions must be encodable
    (a text tower whose tokenizer is its folder's own has none without it: the photographs are left out)."""
    a = stack.enter_context(opened(first, config=config))
    b = None if second is None else stack.enter_context(opened(second, config=config))
    vocab = a.vocab_file or (b and b.vocab_file)  # a tokenizer beside either file serves both
    a.require_config()
    text = kinds.text(a.config) if a.config.text is not None else None
    photos = photos and (text is None or text.tokenizes(vocab))
    computable(a, "text" in towers and photos, vocab)
    if b is None:
        torch_ck, paddle_ck = a, a
        via = f"{a.layout} layout, through parity's rows"
        sources = {"torch": _provenance(a, None if a.layout == layouts.HUB.NAME else via),
                   "paddle": _provenance(a, None if a.layout == layouts.paddle.NAME else via)}
        label, official = weights_label(a), a.official
    else:
        computable(b, "text" in towers and photos, vocab)
        if {_framework(a), _framework(b)} != {"torch", "paddle"}:
            raise ParityError(f"{first} and {second} are both {_framework(a)} checkpoints ({a.layout}, "
                              f"{b.layout}): give one torch checkpoint and one Paddle checkpoint, or a single "
                              "file to convert in memory")
        torch_ck, paddle_ck = (a, b) if _framework(a) == "torch" else (b, a)
        if torch_ck.config.shapes() != paddle_ck.config.shapes():
            raise ParityError(f"{torch_ck.path} and {paddle_ck.path} have tensors of different shapes: they "
                              "cannot hold the same model")
        if torch_ck.config != paddle_ck.config:
            raise ParityError(f"{torch_ck.path} ({torch_ck.config_source}) and {paddle_ck.path} "
                              f"({paddle_ck.config_source}) have different configs")
        sources = {"torch": _provenance(torch_ck), "paddle": _provenance(paddle_ck)}
        label = f"torch file {weights_label(torch_ck)}; paddle file {weights_label(paddle_ck)}"
        official = torch_ck.official
    entry = registry.by_sha256(torch_ck.sha256)
    reference = entry.reference_logit if official and entry is not None else None
    # Paddle computes float32 on a CPU; float16 -> float32 is exact
    return Sides(torch_plan=torch_ck.plan_in(layouts.HUB.NAME),
                 paddle_plan=paddle_ck.plan_in(layouts.paddle.NAME, "float32"), config=torch_ck.config,
                 label=label, sources=sources, reference=reference, vocab_file=vocab, photos=photos)


def verify(first, second=None, *, config=None, device: str = "auto", atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, photos: bool = True, layers: bool = False,
           noise_factor: float = NOISE_FACTOR, towers=layouts.HUB.TOWERS, outputs=None, images=None, texts=None,
           skip_bad_images: bool = False, batch: int = 16, quick: bool = False, stage=None) -> Report:
    """Verify one checkpoint (each framework gets it, converted in memory for the other) or a torch
    checkpoint against a Paddle one (each framework loads its own). Returns the Report; its `passed` is
    the gate, its `to_dict()` the JSON that `parity verify` writes. Official files (by SHA-256) are also checked against the reference table.
    `config` (a Config, a registered name or a JSON file) gives the config where the file has none.
    `towers`: both (the logits too), or ("text",) or ("image",) alone. One tower of one framework is in
    memory at a time, its tensors read from the file as it is built. A tower alone (a diffusion
    pipeline's text encoder, a VLM's vision tower) is compared on its last and penultimate hidden states,
    its pooled output and its embeds; `outputs` names those that gate the verdict (default: all).
    `images` (a folder) and `texts` (a file, one caption a line): the user's own data in place of the
    photographs, through the model's own preprocessing and tokenizer, `batch` at a time; text -> image and
    image -> text search are compared query by query and gate the verdict. An unreadable image is refused,
    or skipped with `skip_bad_images` (the report names it). `quick`: no float64 pass, so the bound is
    atol + rtol·|x| alone. `stage` is told each step as it starts.

    >>> parity.verify("RN50.pt").passed                             # doctest: +SKIP
    True
    >>> parity.verify("text_encoder_2", outputs=["penultimate_hidden_state", "embeds"])  # doctest: +SKIP
    """
    require("verify", "verifying")
    if (images is None) != (texts is None):
        raise ParityError("searching needs a folder of images and a file of captions together")
    with ExitStack() as stack:
        s = sides(stack, first, second, config, towers, photos)
        # before any image is read (a tower alone: user_set says so)
        if images is not None and s.config.whole and len(towers_for(s.config, towers)) < 2:
            raise ParityError("searching images by text needs both towers computed, not one")
        user = None if images is None else user_set(images, texts, s.config, s.vocab_file, skip_bad_images, batch)
        report = verify_pair(s.torch_plan, s.paddle_plan, s.config, weights=s.label, device=device, atol=atol,
                             rtol=rtol, photos=photos and s.photos, layers=layers, reference=s.reference,
                             noise_factor=noise_factor, towers=towers_for(s.config, towers),
                             vocab_file=s.vocab_file, outputs=outputs, user=user, quick=quick, stage=stage)
    report.sources = s.sources
    return report


def load_model(path, framework: str = "torch", device: str = "auto", config=None, towers=layouts.HUB.TOWERS):
    """parity's CLIP for `framework` ("torch" or "paddle") with the checkpoint's weights, in eval mode
    on `device` (auto: the GPU when present). Any supported file works for either framework. Each tensor
    is read from the file as the model is built (a model's size in memory, not twice it); `towers`:
    ("text",) or ("image",) builds that tower alone (with the logit scale).

    >>> model = parity.load_model("RN50.pt", framework="paddle")    # doctest: +SKIP
    >>> text_encoder = parity.load_model("open_clip_model.safetensors", config="ViT-bigG-14",
    ...                                  towers=("text",))          # doctest: +SKIP
    """
    _check_framework(framework)
    with opened(path, config=config) as ck:
        computable(ck, captions=False)
        return _model(ck, framework, select_device(device)[framework], towers_for(ck.config, towers))


def _check_framework(framework: str) -> None:  # before any file is read
    if framework not in FRAMEWORKS:
        raise ParityError(f"unknown framework {framework!r}: use torch or paddle")
    require(framework, f"parity's {framework} model")


def _model(ck: Checkpoint, framework: str, where: str, towers=layouts.HUB.TOWERS):
    if framework == "torch":
        return torch_model(ck.plan_in(layouts.HUB.NAME), ck.config, device=where, towers=towers)
    return paddle_model(ck.plan_in(layouts.paddle.NAME, "float32"), ck.config, device=where, towers=towers)


def logits(path, framework: str = "torch", device: str = "auto", config=None,
           towers=layouts.HUB.TOWERS) -> dict:
    """The canonical pair through one framework's model, one tower at a time: the logit (with both
    towers) and the feature vectors; for a tower alone, its `last_hidden_state`,
    `penultimate_hidden_state` ([1, L, width] as nested lists), `pooled` and, with a projection, `embeds`."""
    _check_framework(framework)
    devices = select_device(device)
    with opened(path, config=config) as ck:
        computable(ck, captions=False)
        towers = towers_for(ck.config, towers)
        resolution, context, kind = input_sizes(ck.config)
        image, text = canonical_inputs(resolution, context, kind, ck.vocab_file)
        if framework == "torch":
            out = torch_side(ck.plan_in(layouts.HUB.NAME), ck.config, image, text, None, devices["torch"], towers,
                             noise=False).canonical
        else:
            out = paddle_side(ck.plan_in(layouts.paddle.NAME, "float32"), ck.config, image, text, None,
                              devices["paddle"], towers).canonical
    result = {"variant": ck.name or "custom", "framework": framework, "device": device_names(devices)[framework],
              "weights": weights_label(ck), "file": str(Path(path)), "sha256": ck.sha256,
              "logit": None if out.logits is None else float(out.logits.ravel()[0])}
    if result["logit"] is not None and kinds.text(ck.config).logits == "sigmoid":  # SigLIP scores each pair alone
        result["sigmoid"] = 1 / (1 + math.exp(-result["logit"]))
    result.update({name: out[name].ravel().tolist() for name in ("image_features", "text_features")
                   if out[name] is not None})
    if out.states:
        result["tower"] = towers[0]
        result.update({name: value.tolist() for name, value in out.states.items()})  # nested, batch first
    return result


def tokenize(texts, context_length: int | None = None, truncate: bool = False, model=None):
    """Token ids of shape (len(texts), context_length), int64, as `clip.tokenize` makes them; for a `model`
    (a Config or a registered name), by its text tower's tokenizer (a BERT's: as Chinese-CLIP's
    `cn_clip.clip.tokenize` does, `parity.text.wordpiece`). The context defaults to the model's (77
    without one).

    Each row is <|startoftext|>, the text's BPE ids, <|endoftext|>, then zeros. A text too long for the
    context raises ValueError unless `truncate`, which cuts it and puts <|endoftext|> last (Chinese-CLIP's
    tokenizer always cuts, keeping [SEP] last).

    >>> tokenize(["a photo of a cat", "a dog"]).shape
    (2, 77)
    >>> tokenize("一张猫的照片", model="cn_clip/ViT-B-16").shape
    (1, 52)
    """
    if model is None:
        return bpe.tokenize(texts, context_length, truncate)
    config = registry.get(model).config if isinstance(model, str) else model
    return kinds.text(config).tokenize(texts, context_length or config.text.context_length, truncate=truncate)
