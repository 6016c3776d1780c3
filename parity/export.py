"""Verified export: a checkpoint's towers as deployable graphs (Paddle Inference, ONNX), each loaded back in
its own runtime and held to parity's torch model by `verify`'s element-wise gate before the folder is named.

A folder holds, per tower, the graph files (`image.json` + `image.pdiparams`, or `image.onnx`), with a
dynamic batch and the model's own context; `preprocess.json`; the tokenizer's files; `manifest.json`:
the source and its SHA-256, parity's version, the inputs and outputs, every file's SHA-256, and the
result of the check; `reference.json`: the torch outputs it compared with, and their float32 noise
floors; `report.md`: the check, for a reader. `verify_export` repeats the check later, against the
checkpoint or, without it, against the recorded reference.

The runtimes run on the CPU: Paddle Inference with IR optimisation, and oneDNN for the image tower only
(see ONEDNN), onnxruntime's CPU provider. Exports are float32.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, layouts
from .errors import CheckpointError, OutputExistsError, ParityError
from .formats.atomic import atomic_folder, staging_folder
from .formats.folders import read_json
from .formats.source import sha256
from .harness import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR, Difference, float64
from .inputs import MEAN, STD, canonical_inputs, sample_set

FORMATS = ("paddle-inference", "onnx")
MANIFEST, REFERENCE, REPORT = "manifest.json", "reference.json", "report.md"
TOWERS = layouts.HUB.TOWERS
INPUT_DTYPES = {"image": "float32", "text": "int64"}
CHUNK = 1 << 22
# Paddle Inference on a CPU, measured with `make bench` on 2 cores: oneDNN halves RN50's image tower (8
# images: 0.51 s with it, 1.01 s without) and leaves a ViT's as it is, but makes every text tower about 15x
# slower (ViT-B/32, 8 texts: 5.4 s with it, 0.45 s without), so it runs for the image tower only
ONEDNN = {"image": True, "text": False}


class ExportError(ParityError):
    """An export folder that cannot be read or run: a missing, corrupt or foreign file (exit 2)."""


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- writing the graphs
def _paddle_graph(plan, config, tower: str, staging: Path) -> None:
    from paddle.static import InputSpec

    from .frameworks import import_paddle
    from .loading import paddle_model

    paddle = import_paddle()

    class Tower(paddle.nn.Layer):
        # paddle.jit matches arguments by name: forward's first parameter must be called `self`
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x) if tower == "image" else self.clip.encode_text(x)

    # parameters are named from a process-wide counter, and a .pdiparams holds them in their names' order:
    # fresh names make every export of one architecture name (and order) its parameters alike, whatever
    # the process built before, so a parameters file fits any export of the same model
    with paddle.utils.unique_name.guard():
        model = paddle_model(plan, config, towers=(tower,))
        paddle.jit.save(Tower(model).eval(), str(staging / tower),
                        input_spec=[InputSpec(_input_shape(config, tower), INPUT_DTYPES[tower], tower)])


def _onnx_graph(plan, config, tower: str, staging: Path) -> None:
    import torch

    from .loading import torch_model

    model = torch_model(plan, config, towers=(tower,)).float()

    class Tower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x) if tower == "image" else self.clip.encode_text(x)

    example = _example(config, tower)
    size = sum(p.numel() * 4 for p in model.parameters())
    # torch's dynamo exporter: the TorchScript one traced the ResNet attention pool's batch as a constant
    torch.onnx.export(Tower(model).eval(), (torch.from_numpy(example),), str(staging / f"{tower}.onnx"),
                      input_names=[tower], output_names=["features"], dynamo=True, verbose=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                      external_data=size > (1800 << 20))  # protobuf's 2 GiB limit on one file


def _input_shape(config, tower: str) -> list:
    r = config.vision.image_size
    return [None, 3, r, r] if tower == "image" else [None, config.text.context_length]


def _example(config, tower: str) -> np.ndarray:
    image, text = canonical_inputs(config.vision.image_size, config.text.context_length, config.text.is_bert)
    return np.concatenate([image, image]) if tower == "image" else np.concatenate([text, text])


WRITERS = {"paddle-inference": _paddle_graph, "onnx": _onnx_graph}


# ---------------------------------------------------------------- running them
def runner(folder: Path, fmt: str, tower: str):
    """A function from an input batch (numpy) to the tower's features, in the format's own runtime."""
    folder = Path(folder)
    files = [folder / f"{tower}.json", folder / f"{tower}.pdiparams"] if fmt == "paddle-inference" else \
        [folder / f"{tower}.onnx"]
    for f in files:
        if not f.is_file():
            raise ExportError(f"{f}: missing from the export")
    try:
        if fmt == "paddle-inference":
            from .frameworks import import_paddle

            import_paddle()
            from paddle import inference

            c = inference.Config(str(files[0]), str(files[1]))
            c.disable_gpu()
            c.disable_glog_info()
            if ONEDNN[tower]:
                c.enable_mkldnn()
            else:
                c.disable_mkldnn()
            c.switch_ir_optim(True)
            c.set_cpu_math_library_num_threads(_threads())
            predictor = inference.create_predictor(c)

            def run(x: np.ndarray) -> np.ndarray:
                handle = predictor.get_input_handle(predictor.get_input_names()[0])
                handle.reshape(list(x.shape))
                handle.copy_from_cpu(np.ascontiguousarray(x))
                try:
                    predictor.run()
                except Exception as e:  # a parameters file that loads but does not fit the program
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise ExportError(f"{folder}: the {tower} tower's files do not fit each other ({first})") from None
                return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
            return run
        from .frameworks import import_onnxruntime

        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(files[0]), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.ascontiguousarray(x)})[0]
    except ParityError:
        raise
    except Exception as e:  # the runtime's own error for a file it cannot read
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{folder}: the {fmt} runtime cannot load the {tower} tower ({first})") from None


# ---------------------------------------------------------------- the reference and the check
def reference(plan, config, inputs: dict, towers) -> dict:
    """parity's torch model, one tower at a time: each input set's features in float32, and the float32
    noise floor (max |float32 - float64|) of each."""
    import torch

    from .loading import torch_model

    out = {}
    for tower in towers:
        model = torch_model(plan, config, towers=(tower,))
        encode = model.encode_image if tower == "image" else model.encode_text
        out[tower] = {}
        for name, x in inputs[tower].items():
            with torch.no_grad():
                fp32 = encode(torch.from_numpy(x)).double().numpy()
                with float64(model):
                    fp64 = encode(torch.from_numpy(x.astype(np.float64) if tower == "image" else x)).numpy()
            out[tower][name] = {"features": fp32.tolist(), "noise": float(np.abs(fp32 - fp64).max())}
        del model
        gc.collect()
    return out


def _inputs(config, vocab_file=None) -> dict:
    """Per tower: the canonical input (batch 1) and the photographs (a batch of 3, then one at a time)."""
    v, t = config.vision, config.text
    image, text = canonical_inputs(v.image_size, t.context_length, t.is_bert, vocab_file)
    shots = sample_set(v.image_size, t.context_length, bert=t.is_bert, vocab_file=vocab_file)
    return {"image": {"canonical": image, "photos": shots.images},
            "text": {"canonical": text, "photos": shots.tokens}}


def check(folder: Path, fmt: str, towers, ref: dict, inputs: dict, atol: float, rtol: float,
          noise_factor: float) -> dict:
    """Each tower's outputs in the runtime against the reference, by verify's gate: per input set, the
    Difference; the photographs run as a batch of 3 and then one at a time (one export, two batch sizes)."""
    results = {}
    for tower in towers:
        run = runner(folder, fmt, tower)
        results[tower] = {}
        for name, x in inputs[tower].items():
            got = np.concatenate([run(x[:3])] + [run(x[i:i + 1]) for i in range(3, len(x))]) if len(x) > 3 else run(x)
            want = ref[tower][name]
            diff = Difference.between(np.asarray(want["features"]), got, atol, rtol, want["noise"], noise_factor)
            if got.shape != np.asarray(want["features"]).shape:
                diff.passed = False
            results[tower][name] = asdict(diff)
        del run
        gc.collect()
    return results


@dataclass
class ExportReport:
    """What an export or a later check found: per tower and input set, verify's Difference as a dict."""

    folder: str
    format: str
    towers: list[str]
    results: dict
    against: str  # "checkpoint <path>" or "the manifest's recorded reference"
    gate: dict
    seconds: float
    changed_files: list[str] = field(default_factory=list)  # files whose SHA-256 is not the manifest's

    @property
    def passed(self) -> bool:
        return all(r["passed"] for tower in self.results.values() for r in tower.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        parts = [f"{tower} {name} |Δ| {r['max_abs']:.2e} (bound {r['bound']:.1e}, {r['bound_kind']})"
                 for tower, rows in self.results.items() for name, r in rows.items()]
        return f"{self.format} {self.folder}: {'PASS' if self.passed else 'FAIL'} — " + ", ".join(parts)


# ---------------------------------------------------------------- the folder's other files
def _preprocess(config) -> dict:
    r = config.vision.image_size
    resize = ({"resize": [r, r], "center_crop": None} if config.text.is_bert else  # cn_clip: straight to R x R
              {"resize": f"shorter side to {r}", "center_crop": [r, r]})
    return {"image_size": r, **resize, "interpolation": "bicubic", "rescale": 1 / 255, "mean": MEAN.tolist(),
            "std": STD.tolist(), "layout": "NCHW float32 RGB"}


def _tokenizer_files(config, vocab_file) -> dict[str, bytes]:
    t = config.text
    if t.is_bert:
        from .wordpiece import WordPiece, default_vocabulary

        vocab = WordPiece(vocab_file or default_vocabulary())
        spec = {"kind": "bert-wordpiece", "vocabulary": "vocab.txt", "context_length": t.context_length,
                "lower_case": True, "cls": vocab.vocab["[CLS]"], "sep": vocab.vocab["[SEP]"], "pad": 0,
                "pooling": "[CLS]; padding (id 0) masked"}
        return {"vocab.txt": vocab.data, "tokenizer.json": json.dumps(spec, indent=2).encode()}
    from .tokenizer import default_tokenizer, default_vocabulary

    tok = default_tokenizer()
    spec = {"kind": "clip-bpe", "vocabulary": "bpe_simple_vocab_16e6.txt.gz", "context_length": t.context_length,
            "start": tok.start, "end": tok.end, "pad": 0, "pooling": "the highest id (end of text)"}
    return {"bpe_simple_vocab_16e6.txt.gz": Path(default_vocabulary()).read_bytes(),
            "tokenizer.json": json.dumps(spec, indent=2).encode()}


def _copy(path: Path):
    def write(f):
        with open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                f.write(chunk)
    return write


# ---------------------------------------------------------------- the two entry points
def export(checkpoint, to: str, out, *, towers=TOWERS, config=None, force: bool = False, atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, noise_factor: float = NOISE_FACTOR) -> ExportReport:
    """Export CHECKPOINT's towers to `to` ("paddle-inference" or "onnx") in the folder `out`, then load each
    in its runtime and hold it to parity's torch model (canonical pair and photographs, batches of 3
    and 1). The folder is named only when complete; it is written when the check fails too (its
    manifest says so), and `ExportReport.passed` is the gate.

    >>> parity.export("ViT-B-32.pt", "paddle-inference", "clip-pi").passed    # doctest: +SKIP
    True
    """
    from .api import computable
    from .checkpoint import opened

    if to not in FORMATS:
        raise ParityError(f"unknown export format {to!r}: use {' or '.join(FORMATS)}")
    out = Path(out)
    towers = [t for t in TOWERS if t in towers]
    if not force and (out.exists() or out.is_symlink()):
        raise OutputExistsError(f"{out} already exists")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out.parent}: no such folder to write the export in")
    start = time.perf_counter()
    with opened(checkpoint, config=config) as ck:
        computable(ck)
        cfg = ck.config
        plan_torch = ck.plan_in(layouts.HUB.NAME)
        inputs = _inputs(cfg, ck.vocab_file)
        ref = reference(plan_torch, cfg, inputs, towers)
        staging = staging_folder(out.parent)  # the graphs' libraries write by name: never the output itself
        try:
            plan = plan_torch if to == "onnx" else ck.plan_in(layouts.paddle.NAME, "float32")
            for tower in towers:
                with contextlib.redirect_stdout(sys.stderr):  # the exporters' progress lines: stdout is the result's
                    WRITERS[to](plan, cfg, tower, staging)
                gc.collect()
            results = check(staging, to, towers, ref, inputs, atol, rtol, noise_factor)
            graphs = sorted(p.name for p in staging.iterdir() if p.is_file())
            report = ExportReport(str(out), to, towers, results, f"checkpoint {ck.path}",
                                  {"atol": atol, "rtol": rtol, "noise_factor": noise_factor},
                                  time.perf_counter() - start)
            extra = {"preprocess.json": json.dumps(_preprocess(cfg), indent=2).encode(),
                     **_tokenizer_files(cfg, ck.vocab_file), REFERENCE: json.dumps(ref).encode()}
            hashes = {name: sha256(staging / name) for name in graphs}
            hashes.update({name: hashlib.sha256(data).hexdigest() for name, data in extra.items()})
            manifest = {
                "parity_version": __version__, "format": to, "towers": towers,
                "source": {"file": str(ck.path), "sha256": ck.sha256, "layout": ck.layout, "model": ck.name},
                "config": cfg.to_dict(), "logit_scale": _logit_scale(plan_torch),
                "inputs": {tower: {"name": tower, "shape": _input_shape(cfg, tower), "dtype": INPUT_DTYPES[tower]}
                           for tower in towers},
                "outputs": {tower: {"name": "features", "shape": [None, cfg.embed_dim], "dtype": "float32"}
                            for tower in towers},
                "runtime": _runtime(to), "files": hashes,
                "verification": {"against": report.against, "gate": report.gate, "passed": report.passed,
                                 "results": results},
            }
            files = [(name, _copy(staging / name), _same(hashes[name])) for name in graphs]
            files += [(name, lambda f, d=data: f.write(d), None) for name, data in extra.items()]
            files.append((REPORT, lambda f: f.write(_markdown(report, manifest).encode()), None))
            files.append((MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()), None))
            atomic_folder(out, files, force=force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _same(expected: str):
    def check(source):  # the copy, read back through its own descriptor
        if sha256(source) != expected:
            raise CheckpointError("a graph file changed while it was copied into the export")
    return check


def _markdown(report: ExportReport, manifest: dict) -> str:
    src = manifest["source"]
    lines = [f"# {manifest['format']} export of {src['model'] or 'an unregistered CLIP'}", "",
             f"Source: `{src['file']}` (SHA-256 `{src['sha256']}`, {src['layout']} layout); parity "
             f"{manifest['parity_version']}; runtime: {json.dumps(manifest['runtime'])}.", "",
             f"Checked against parity's torch model on {report.against}: |Δ| ≤ max(atol {report.gate['atol']} + "
             f"rtol {report.gate['rtol']}·|x|, {report.gate['noise_factor']} × float32's noise floor), element by "
             "element; the photographs ran as a batch of 3, then batches of 1.", "",
             f"**{'PASS' if report.passed else 'FAIL'}**", "",
             "| tower | inputs | max abs Δ | bound | bound from | cosine | passed |", "|---|---|---|---|---|---|---|"]
    for tower, rows in report.results.items():
        for name, r in rows.items():
            lines.append(f"| {tower} | {name} | {r['max_abs']:.2e} | {r['bound']:.1e} | {r['bound_kind']} | "
                         f"{r['cosine']:.8f} | {'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _logit_scale(plan) -> float:
    return float(np.exp(np.asarray(plan["logit_scale"](), dtype=np.float64)).reshape(()))


def _runtime(fmt: str) -> dict:
    if fmt == "paddle-inference":
        return {"library": "paddle.inference", "device": "cpu", "ir_optim": True, "onednn": ONEDNN,
                "threads": _threads()}
    return {"library": "onnxruntime", "providers": ["CPUExecutionProvider"], "threads": _threads()}


def verify_export(folder, checkpoint=None, *, config=None, atol: float | None = None, rtol: float | None = None,
                  noise_factor: float | None = None) -> ExportReport:
    """Load an export folder in its runtime and hold it, by verify's gate, to parity's torch model on
    `checkpoint` (the outputs computed afresh), or without one to the reference its manifest recorded.
    The gate's tolerances are the manifest's unless given. ExportError for a missing or unreadable file."""
    from .api import computable
    from .checkpoint import opened
    from .config import Config

    start = time.perf_counter()
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ExportError(f"{folder}: no {MANIFEST}: not a parity export folder")
    try:
        manifest = read_json(folder / MANIFEST, "export manifest")
        fmt, towers = manifest["format"], list(manifest["towers"])
        cfg = Config.from_dict(manifest["config"])
        gate = manifest["verification"]["gate"]
        if fmt not in FORMATS or not towers or set(towers) - set(TOWERS):
            raise ValueError(f"format {fmt!r}, towers {towers!r}")
    except ParityError as e:
        raise ExportError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{folder / MANIFEST}: not a parity export manifest ({type(e).__name__}: {e})") from None
    atol = gate["atol"] if atol is None else atol
    rtol = gate["rtol"] if rtol is None else rtol
    noise_factor = gate["noise_factor"] if noise_factor is None else noise_factor
    vocab = folder / "vocab.txt" if cfg.text.is_bert and (folder / "vocab.txt").is_file() else None
    inputs = _inputs(cfg, vocab)
    if checkpoint is not None:
        with opened(checkpoint, config=config or cfg) as ck:
            computable(ck)
            if ck.config != cfg:
                raise ExportError(f"{checkpoint} holds another model than the export ({ck.config.describe()})")
            ref = reference(ck.plan_in(layouts.HUB.NAME), cfg, inputs, towers)
        against = f"checkpoint {checkpoint}"
    else:
        against = "the reference recorded at export"
        ref = read_json(folder / REFERENCE, "export reference") if (folder / REFERENCE).is_file() else None
        if not isinstance(ref, dict) or set(ref) != set(towers):
            raise ExportError(f"{folder / REFERENCE}: no recorded reference for {', '.join(towers)}; give the "
                              "checkpoint to compare with")
    results = check(folder, fmt, towers, ref, inputs, atol, rtol, noise_factor)
    changed = sorted(name for name, digest in manifest.get("files", {}).items()
                     if not (folder / name).is_file() or sha256(folder / name) != digest)
    return ExportReport(str(folder), fmt, towers, results, against,
                        {"atol": atol, "rtol": rtol, "noise_factor": noise_factor}, time.perf_counter() - start,
                        changed)
