"""Reports under reports/: per variant `<slug>.json`, `<slug>.md` and `<slug>-similarity.png`; for a
whole run `verify-all.md` and `verify-all.json`. Every file is written whole or not at all."""
from __future__ import annotations

import json
import math
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..version import __version__
from ..errors import ParityError, printable
from ..io.formats.atomic import atomic_write, write_bytes

from . import search
from .gate import PhotoFeature

if TYPE_CHECKING:
    from .gate import Difference
    from .search import Search


@dataclass
class Photos:
    """The photographs with their captions, through both frameworks."""

    names: list[str]
    captions: list[str]
    torch_similarity: list | None  # image x text cosine similarities (None: one tower verified)
    paddle_similarity: list | None
    argmax_agreement: float | None
    top_k: int
    topk_agreement: float | None
    similarity_max_abs: float | None
    differences: dict[str, PhotoFeature]
    passed: bool


@dataclass
class ReferenceCheck:
    """Official weights against the reference table."""

    logit: float
    torch_delta: float
    paddle_delta: float
    bound: float
    passed: bool


CANONICAL = "the canonical pair"  # the inputs a layer diagnosis runs on unless told others


@dataclass
class LayerDiagnosis:
    """Every module's output compared on one input pair (`table`: one row per module, in execution
    order), and the first module beyond its bound (None: none). `inputs` says which pair: the canonical
    one, or where that agrees, the photograph or the user's image and caption that part the frameworks most."""

    first_divergence: str | None
    modules_compared: int
    modules_torch_only: list[str]
    table: list[dict]
    inputs: str = CANONICAL

    def on(self) -> str:
        """"" on the canonical pair, else " (on <the inputs>)": what follows the layer where it is named."""
        return "" if self.inputs == CANONICAL else f" (on {printable(self.inputs)})"


@dataclass(kw_only=True)
class Report:
    """What `parity verify` finds: the canonical pair's outputs and their differences, the photographs,
    the reference table where it applies, the layer diagnosis where it ran. Built by keyword; `to_dict`
    is its JSON."""

    variant: str
    weights: str
    config: dict
    devices: dict
    versions: dict
    atol: float
    rtol: float
    noise_factor: float
    inputs: dict
    torch_logit: float | None  # None: one tower verified
    paddle_logit: float | None
    noise_floor: dict | None  # None: quick (no float64 pass)
    differences: dict[str, "Difference"]
    feature_cosine: float
    features: dict
    seconds_torch: float
    seconds_paddle: float
    passed: bool = False
    seconds: float = 0.0
    photos: Photos | None = None
    reference: ReferenceCheck | None = None
    layers: LayerDiagnosis | None = None
    sources: dict | None = field(default=None)  # each framework's file: path, format, SHA-256, layout
    gated: list[str] | None = None  # the compared outputs that gate `passed` (None: all)
    loss: str = "softmax"  # how its logits become probabilities: "softmax" over texts (CLIP), "sigmoid" (SigLIP)
    search: "Search | None" = None  # the user's images and captions (verify --images --texts)
    quick: bool = False  # no float64 pass: the bound is atol + rtol·|x| alone
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (verify-all)

    def probabilities(self) -> tuple[float, float] | None:
        """SigLIP's canonical sigmoid probability in torch and Paddle (None for CLIP, or one tower)."""
        if self.loss != "sigmoid" or self.torch_logit is None:
            return None
        return tuple(float(1 / (1 + math.exp(-x))) for x in (self.torch_logit, self.paddle_logit))

    def to_dict(self) -> dict:
        """The JSON form: every field, the optional parts only where present."""
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("photos", "reference", "layers", "sources", "search")}


COLUMNS = ("variant", "weights", "torch logit", "paddle logit", "|Δ logit|", "bound", "feature cosine",
           "top-5 agreement", "status", "seconds")
SYNTHETIC_NOTE = ("Synthetic weights are deterministic random weights in the release's dtype mix: their logits "
                  "are not official results and are never compared with the reference table.")


def slug(variant: str) -> str:
    return re.sub(r"[/@ ]", "-", variant)


def status(r: Report) -> str:
    return "PASS" if r.passed else "FAIL"


def _row(r: Report) -> list[str]:
    top = f"{r.photos.topk_agreement:.0%} (top-1 {r.photos.argmax_agreement:.0%})" \
        if r.photos and r.photos.topk_agreement is not None else "-"
    logit = r.differences.get("logits")
    if logit is None:  # one tower: its features stand in the logit's columns
        return [r.variant, r.weights, "-", "-", "-", "-", f"{r.feature_cosine:.8f}", top, status(r), f"{r.seconds:.1f}"]
    return [r.variant, r.weights, f"{r.torch_logit:.6f}", f"{r.paddle_logit:.6f}", f"{logit.max_abs:.2e}",
            f"{logit.bound:.1e} ({logit.bound_kind})", f"{r.feature_cosine:.8f}", top, status(r), f"{r.seconds:.1f}"]


def markdown_table(results: list[Report]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def verdict(r: Report) -> str:
    """`parity verify`'s line: the status, the logit (or the one tower's features) with its |Δ| and bound,
    the feature cosine, the photographs' top-5 agreement, the reference table, the first module apart."""
    d = r.differences.get("logits")
    if "last_hidden_state" in r.differences:  # a tower alone: each output consumers use, and what gates
        outputs = ", ".join(f"{name} |Δ| {x.max_abs:.2e} (bound {x.bound:.1e}) {'ok' if x.passed else 'FAIL'}"
                            for name, x in r.differences.items())
        gated = "all" if r.gated is None or list(r.gated) == list(r.differences) else ", ".join(r.gated)
        text = f"{r.variant}: {status(r)} — {' and '.join(r.inputs.get('towers', []))} tower alone: {outputs}; gated on {gated}"
    elif d is None:  # one tower
        name = next(iter(r.differences))
        d = r.differences[name]
        text = (f"{r.variant}: {status(r)} — {name} only |Δ| {d.max_abs:.2e} (bound {d.bound:.1e}, "
                f"{d.bound_kind}), feature cosine {r.feature_cosine:.8f}")
    else:
        text = (f"{r.variant}: {status(r)} — logit torch {r.torch_logit:.6f} paddle {r.paddle_logit:.6f} "
                f"|Δ| {d.max_abs:.2e} (bound {d.bound:.1e}, {d.bound_kind}), feature cosine {r.feature_cosine:.8f}")
        if p := r.probabilities():
            text += f", sigmoid torch {p[0]:.6f} paddle {p[1]:.6f}"
    if r.photos and r.photos.topk_agreement is not None:
        text += f", top-5 agreement {r.photos.topk_agreement:.0%}"
    if r.search:
        text += f"; {search.summary(r.search)}"
    if r.reference:
        text += f", reference {r.reference.logit:.4f} {'PASS' if r.reference.passed else 'FAIL'}"
    if r.layers is not None:
        text += f"; first module beyond its bound: {r.layers.first_divergence or 'none'}{r.layers.on()}"
    return text


def logit_line(r: Report) -> str:
    """`parity verify-all`'s line for a variant done: the status, |Δ logit| and the seconds it took."""
    if "logits" not in r.differences:  # a tower alone: its penultimate hidden state, what pipelines condition on
        d = r.differences["penultimate_hidden_state"]
        return f"{status(r)} |Δ penultimate hidden state| {d.max_abs:.2e} ({r.seconds:.1f} s)"
    return f"{status(r)} |Δ logit| {r.differences['logits'].max_abs:.2e} ({r.seconds:.1f} s)"


def atomic_write_text(path: Path, text: str) -> None:
    # file names from the command line may hold bytes that are not UTF-8 (surrogate escapes): written back as bytes
    write_bytes(path, text.encode("utf-8", "surrogateescape"))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _gate_text(r: Report) -> str:
    if r.quick:
        return (f"Gate (quick: no float64 pass, so no noise floor), element by element: |Δ| ≤ atol + rtol·|torch|, "
                f"atol {r.atol:g}, rtol {r.rtol:g}. The bound shown is the one at the element nearest its limit.")
    return (f"Gate, element by element: |Δ| ≤ max(atol + rtol·|torch|, {r.noise_factor:g} × float32 noise floor), "
            f"atol {r.atol:g}, rtol {r.rtol:g}; the noise floor is parity's torch model in float64 vs float32 "
            "on the same weights and inputs. The bound shown is the one at the element nearest its limit.")


def variant_markdown(r: Report, picture: str | None) -> str:
    md = [f"# {r.variant} — {status(r)}", "",
          f"Weights: {r.weights}. " + (SYNTHETIC_NOTE if r.weights.startswith("synthetic") else ""), ""]
    for side, src in (r.sources or {}).items():
        md.append(f"- {side}: `{src.get('path')}` ({src.get('format')}, {src.get('layout')} layout, "
                  f"sha256 `{src.get('sha256')}`)")
    md += [f"- devices: torch {r.devices['torch']}, paddle {r.devices['paddle']}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()),
           f"- canonical input: {r.inputs['canonical']}", "", _gate_text(r), "",
           "| output | max abs Δ | relative Δ | cosine | float32 noise floor | bound | status |", "|---|---|---|---|---|---|---|"]
    for name, d in r.differences.items():
        floor = "-" if r.noise_floor is None else f"{r.noise_floor[name]:.2e}"
        md.append(f"| {name} | {d.max_abs:.3e} | {d.relative:.3e} | {d.cosine:.10f} | {floor} | "
                  f"{d.bound:.2e} ({d.bound_kind}) | {'PASS' if d.passed else 'FAIL'} |")
    if r.torch_logit is not None:
        md += ["", f"Canonical logit: torch {r.torch_logit:.6f}, paddle {r.paddle_logit:.6f}."]
        if p := r.probabilities():
            md[-1] += (f" Its sigmoid probability (SigLIP scores each pair on its own): torch {p[0]:.6f}, "
                       f"paddle {p[1]:.6f}.")
    else:
        md += ["", f"One tower verified ({', '.join(r.inputs.get('towers', []))}): no logit."]
    if r.reference is not None:
        ref = r.reference
        md += ["", f"Reference table (official weights): {ref.logit:.4f}; torch |Δ| {ref.torch_delta:.2e}, "
                   f"paddle |Δ| {ref.paddle_delta:.2e}, bound {ref.bound:.1e}: {'PASS' if ref.passed else 'FAIL'}."]
    photos = r.photos
    if photos and photos.torch_similarity is None:
        md += ["", "## Photographs", "", f"{len(photos.names)} scikit-image photographs with one caption each; one "
               f"tower: each feature vector's cosine between the frameworks ≥ {min_cosine(photos)} is gated.", "",
               "| output | max abs Δ | relative Δ | lowest cosine | status |", "|---|---|---|---|---|"]
        md += [f"| {name} | {d.max_abs:.3e} | {d.relative:.3e} | {d.min_row_cosine:.10f} | "
               f"{'PASS' if d.passed else 'FAIL'} |" for name, d in photos.differences.items()]
    elif photos:
        md += ["", "## Photographs", "",
               f"{len(photos.names)} scikit-image photographs with one caption each, preprocessed and tokenized "
               f"once by parity: top-1 agreement {photos.argmax_agreement:.0%}, top-{photos.top_k} agreement "
               f"{photos.topk_agreement:.0%}, max |Δ cosine similarity| {photos.similarity_max_abs:.2e}.", "",
               "Gate: the same best caption for every photograph, and each feature vector's cosine between the "
               f"frameworks ≥ {photos.differences['image_features'].bound} (the float32 noise floor is measured "
               "on the canonical pair only; |Δ| here is shown, not gated).", "",
               "| output | max abs Δ | relative Δ | lowest cosine | status |", "|---|---|---|---|---|"]
        for name, d in photos.differences.items():
            md.append(f"| {name} | {d.max_abs:.3e} | {d.relative:.3e} | {d.min_row_cosine:.10f} | "
                      f"{'PASS' if d.passed else 'FAIL'} |")
        if picture:
            md += ["", f"![image × text cosine similarity, torch | paddle | difference]({picture})"]
    if r.search:
        md += search.markdown(r.search)
    layers = r.layers
    if layers is not None:
        md += ["", "## Layers", "", f"{layers.modules_compared} modules compared on {printable(layers.inputs)}; "
               f"first beyond its bound: **{layers.first_divergence or 'none'}**.", ""]
        table = [row for row in layers.table if "passed" in row]
        shown = [row for row in table if not row["passed"]][:15] or \
            sorted(table, key=lambda row: -row["max_abs"] / row["bound"])[:10]
        md += ["| module | shape | max abs Δ | cosine | bound | status |", "|---|---|---|---|---|---|"]
        md += [f"| {row['module']} | {row['shape']} | {row['max_abs']:.3e} | {row['cosine']:.8f} | "
               f"{row['bound']:.2e} ({row['bound_kind']}) | {'PASS' if row['passed'] else 'FAIL'} |" for row in shown]
    md += ["", f"{r.seconds:.1f} s (torch side {r.seconds_torch:.1f} s, paddle side {r.seconds_paddle:.1f} s).", ""]
    return "\n".join(md)


def min_cosine(photos: Photos) -> float:
    return next(iter(photos.differences.values())).bound


def _labels(photos: Photos) -> list[str]:
    # the captions, where the plotting font has their glyphs; Chinese captions (without a CJK font here)
    # are shown by the English caption of the same photograph, marked as translated
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from .inputs import SAMPLES

    glyphs = FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap()
    if all(ord(ch) in glyphs for caption in photos.captions for ch in caption):
        return photos.captions
    return [f"{SAMPLES.get(name, name)} (captioned in Chinese)" for name in photos.names]


def similarity_picture(r: Report, path: Path) -> None:
    """torch's and Paddle's image x text cosine similarity side by side, with their difference."""
    import logging

    import matplotlib
    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # Paddle's root handler would print its INFO lines
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from .inputs import sample_path

    photos = r.photos
    st, sp = np.array(photos.torch_similarity).T, np.array(photos.paddle_similarity).T  # (texts, images)
    n_txt, n_img = st.shape
    fig, axes = plt.subplots(1, 3, figsize=(24, 9), gridspec_kw={"width_ratios": [1, 1, 1]})
    low, high = min(st.min(), sp.min()), max(st.max(), sp.max())
    for ax, sim, title in ((axes[0], st, "torch"), (axes[1], sp, "paddle")):
        ax.imshow(sim, vmin=low, vmax=high, cmap="viridis")
        for i in range(n_img):  # the photographs under the columns, as in CLIP's notebook
            with Image.open(sample_path(photos.names[i])) as im:
                ax.imshow(np.asarray(im.convert("RGB")), extent=(i - 0.5, i + 0.5, n_txt + 0.5, n_txt - 0.5 + 1.9))
        for (y, x), v in np.ndenumerate(sim):
            ax.text(x, y, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white")
        ax.set_xlim(-0.5, n_img - 0.5)
        ax.set_ylim(n_txt + 1.6, -0.5)
        ax.set_xticks([])
        ax.set_title(f"{title}: cosine similarity", fontsize=14)
    axes[0].set_yticks(range(n_txt), _labels(photos), fontsize=10)
    axes[1].set_yticks([])
    diff = st - sp
    limit = max(float(np.abs(diff).max()), 1e-12)
    shown = axes[2].imshow(diff, cmap="RdBu", vmin=-limit, vmax=limit)
    axes[2].set_xticks(range(n_img), photos.names, rotation=45, ha="right", fontsize=9)
    axes[2].set_yticks([])
    axes[2].set_title(f"torch − paddle (max |Δ| {limit:.1e})", fontsize=14)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    fig.suptitle(f"{r.variant} — {r.weights} — {status(r)}", fontsize=16)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=60, format="png"), force=True)
    finally:
        plt.close(fig)


def _report_dir(report_dir: Path) -> None:
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParityError(f"cannot hold the reports ({e.strerror or e}); choose another folder", path=report_dir) from None


def write_variant(r: Report, report_dir: Path) -> dict[str, Path]:
    """`<slug>.json`, `<slug>.md` and, with photographs, `<slug>-similarity.png` under `report_dir`."""
    _report_dir(report_dir)
    name = slug(r.variant)
    paths = {"json": report_dir / f"{name}.json", "markdown": report_dir / f"{name}.md"}
    picture = None
    if r.photos and r.photos.torch_similarity is not None:
        paths["png"] = report_dir / f"{name}-similarity.png"
        similarity_picture(r, paths["png"])
        picture = paths["png"].name
    atomic_write_text(paths["json"], json.dumps({"date": _now(), "machine": machine(), **r.to_dict()}, indent=1))
    atomic_write_text(paths["markdown"], variant_markdown(r, picture))
    return paths


def write_verify_all(results: list[Report], report_dir: Path, total_seconds: float,
                     selection: str | None = None) -> tuple[Path, Path]:
    """verify-all.md and .json; `selection` says which variants (the shard) they are."""
    _report_dir(report_dir)
    meta = {"parity": __version__, "date": _now(), "machine": machine(), "total_seconds": total_seconds,
            "selection": selection, "passed": all(r.passed for r in results)}
    md = [f"# verify-all — {'PASS' if meta['passed'] else 'FAIL'}", "", *([f"Variants: {selection}.", ""] * bool(selection)),
          f"parity {__version__}, {meta['date']}, {meta['machine']}; total {total_seconds:.1f} s.", "",
          "Canonical input: image = ones/2 (1, 3, R, R), text = ones (1, 77); photographs: scikit-image's sample "
          "set with a caption each (top-5 agreement: the same five captions, in the same order, for every "
          "photograph). " + SYNTHETIC_NOTE + (" Bound (quick: no float64 pass, so no noise floor): atol + rtol·|x|"
                                              if any(r.quick for r in results) else
                                              " Bound: max(atol + rtol·|x|, noise factor × float32 noise floor)") +
          " at the element nearest it. One report per variant beside this file.", "",
          markdown_table(results), ""]
    md_path, json_path = report_dir / "verify-all.md", report_dir / "verify-all.json"
    slim = [{k: v for k, v in r.to_dict().items() if k not in ("features",)} for r in results]
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(json_path, json.dumps({**meta, "results": slim}, indent=1))
    return md_path, json_path
