"""Writing an export folder: beside the graphs, `preprocess.json`, the tokenizer's files,
`reference.json` (the torch outputs the check compared with, and their float32 noise floors),
`report.md` (the check, for a reader) and `manifest.json`, all written at once (`atomic_folder`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import CheckpointError
from .. import towers
from ..harness.inputs import MEAN, STD
from ..io.formats.atomic import atomic_folder
from ..io.formats.source import sha256
from .manifest import manifest_for
from .spec import MANIFEST, REFERENCE, REPORT
from .verification import ExportReport

CHUNK = 1 << 22


def write_folder(out: Path, staging: Path, ck, plan, report: ExportReport, ref: dict, force: bool) -> None:
    """The folder `out`: the graphs written in `staging`, and the files that describe them, of the
    checkpoint `ck` (`plan`: its plan in the hub's layout), checked as `report` says against `ref`."""
    cfg = ck.config
    graphs = sorted(p.name for p in staging.iterdir() if p.is_file())
    extra = {"preprocess.json": json.dumps(_preprocess(cfg), indent=2).encode(),
             **towers.text(cfg).tokenizer_files(cfg.text, ck.vocab_file), REFERENCE: json.dumps(ref).encode()}
    hashes = {name: sha256(staging / name) for name in graphs}
    hashes.update({name: hashlib.sha256(data).hexdigest() for name, data in extra.items()})
    manifest = manifest_for(ck, plan, report, hashes)
    files = [(name, _copy(staging / name), _same(hashes[name])) for name in graphs]
    files += [(name, lambda f, d=data: f.write(d), None) for name, data in extra.items()]
    # a source named in bytes that are not UTF-8 is written as its escapes (the manifest's JSON escapes it too)
    files.append((REPORT, lambda f: f.write(_markdown(report, manifest).encode("utf-8", "backslashreplace")),
                  None))
    files.append((MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()), None))
    atomic_folder(out, files, force=force)


def _preprocess(config) -> dict:
    r = config.vision.image_size
    # CLIP's mean and std, where the text tower's family does not say its own (SigLIP's: 0.5)
    return {"image_size": r, "interpolation": "bicubic", "rescale": 1 / 255, "mean": MEAN.tolist(), "std": STD.tolist(),
            **towers.text(config).image_preprocessing(r), "layout": "NCHW float32 RGB"}


def _copy(path: Path):
    def write(f):
        with open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                f.write(chunk)
    return write


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


