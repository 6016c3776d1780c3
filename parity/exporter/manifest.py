"""manifest.json, written and read back. Written: the source and its SHA-256, parity's version, the
inputs and outputs, the runtime, every file's SHA-256, and the result of the check. Read back as input
to judge, not a party to trust: the folder is opened once (`Folder`) and its files by plain names only,
never through a link; every field the check uses is checked for its type, and its numbers against the
checkpoint or sane limits (LIMITS), before anything is built from them; the recorded reference
(reference.json) must have the shapes the manifest says; every file's size is bounded (`folder_bytes`)
before it is hashed."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layouts, towers
from ..version import __version__
from ..errors import ParityError
from ..io.formats import bounded_json
from ..io.formats.source import FileSource, sha256
from .runtime import MiB, description
from .spec import FORMATS, MANIFEST, REFERENCE, TOWERS, ExportError, graph_names, input_spec, output_spec
from .verification import GATE, ExportReport, is_number


# ---------------------------------------------------------------- writing
def manifest_for(ck, plan, report: ExportReport, hashes: dict) -> dict:
    """The manifest of an export of the checkpoint `ck` (`plan`: its plan in the hub's layout) that
    `report` checked, whose files have the SHA-256 `hashes`."""
    cfg = ck.config
    return {
        "parity_version": __version__, "format": report.format, "towers": report.towers,
        "source": {"file": str(ck.path), "sha256": ck.sha256, "layout": ck.layout, "model": ck.name},
        "config": cfg.to_dict(), **_logit_head(plan, cfg),
        "inputs": {tower: input_spec(cfg, tower) for tower in report.towers},
        "outputs": {tower: output_spec(cfg) for tower in report.towers},
        "runtime": description(report.format), "files": hashes,
        "verification": {"against": report.against, "gate": report.gate, "passed": report.passed,
                         "results": report.results},
    }


def _logit_head(plan, cfg) -> dict:
    """How a server turns the two towers' normalised features into logits: `logit_scale` (already exp'd)
    times their cosine; SigLIP adds `logit_bias`, and its logits are sigmoid logits (one probability per
    pair), CLIP's softmax ones (over the texts)."""
    def value(key):
        return float(np.asarray(plan[key](), dtype=np.float64).reshape(()))
    head = {"logit_scale": math.exp(value("logit_scale")), "logits": towers.text(cfg).logits}
    if "logit_bias" in plan:
        head["logit_bias"] = value("logit_bias")
    return head


# ---------------------------------------------------------------- reading
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What a manifest's config may ask of the inputs and outputs when no checkpoint vouches for it (the
# inputs are built from these numbers before anything is compared). Every released CLIP fits with room:
# images are 448 px at the most (RN50x64, EVA-02-L), contexts 77 (CLIP), 52 (Chinese-CLIP) or 64
# (SigLIP), embed_dim 1,280 at the most (ViT-bigG); at these bounds the inputs are about 100 MB.
LIMITS = {"vision.image_size": 1024, "text.context_length": 1024, "embed_dim": 8192}
# The most a recorded float32 noise floor may be, as a fraction of its features' median magnitude (a
# median, so that one column made huge cannot raise it): the gate widens to noise_factor times it, so a
# reference that recorded a huge one would pass anything. float32's own, measured on synthetic weights:
# 2e-6 to 1.1e-4 of the median (RN50's photographs the noisiest), ViT-B/32 and a tiny CLIP 3e-6 at most.
RECORDED_NOISE = 1e-2


def _plain_name(name) -> bool:
    """A file name that can only mean a file in the folder itself."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and name == name.strip())


class Folder:
    """An export folder, opened once: its files are opened relative to that descriptor, by plain names
    only, never through a symbolic link (a manifest names files; it must not be able to point parity,
    and what it reports about their hashes, at files outside the folder)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ExportError("no such folder", path=self.path) from None
        except NotADirectoryError:
            raise ExportError("not a folder: an export is a folder", path=self.path) from None
        except OSError as e:
            raise ExportError(f"cannot be opened ({e.strerror})", path=self.path) from None

    @contextlib.contextmanager
    def open(self, name: str, missing: str | None = None):
        """A FileSource for the plain name `name`; None where it is missing and `missing` is None, else
        ExportError with `missing` as the reason."""
        if not _plain_name(name):
            raise ExportError(f"{name!r} is not a file name in the folder", path=self.path)
        try:
            fd = os.open(name, _OPEN, dir_fd=self.fd)
        except FileNotFoundError:
            fd = None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ExportError("a symbolic link; an export's files lie in its own "
                                  "folder", path=self.path / name) from None
            raise ExportError(f"cannot be opened ({e.strerror})", path=self.path / name) from None
        if fd is None:
            if missing is not None:
                raise ExportError(f"{missing}", path=self.path / name)
            yield None
            return
        try:
            with FileSource(self.path / name, fd) as source:  # fstat: a FIFO or a device is refused
                yield source
        finally:
            os.close(fd)

    def json(self, name: str, kind, missing: str) -> dict:
        with self.open(name, missing) as source:
            return bounded_json.read_source(source, kind)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Manifest:
    """What `read_manifest` found: the fields of a manifest that a check uses."""

    format: str
    towers: list
    config: object
    gate: dict  # the gate recorded at export
    files: dict  # plain name -> SHA-256


def read_manifest(folder: Folder) -> Manifest:
    """The manifest's fields that a check uses, each of its type (ExportError naming the first that is
    not): a malformed manifest is the folder's fault (exit 2), never a crash."""
    from ..config.schema import Config

    path = folder.path / MANIFEST
    manifest = folder.json(MANIFEST, bounded_json.MANIFEST, "missing: not a parity export folder")

    def bad(what: str) -> ExportError:
        return ExportError(f"not a parity export manifest ({what})", path=path)

    fmt, towers = manifest.get("format"), manifest.get("towers")
    if fmt not in FORMATS:
        raise bad(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if not isinstance(towers, list) or not towers or any(t not in TOWERS for t in towers) or \
            len(set(towers)) != len(towers):
        raise bad(f"towers {towers!r}: a list of {' and/or '.join(TOWERS)}")
    towers = [t for t in TOWERS if t in towers]
    if not isinstance(manifest.get("config"), dict):
        raise bad("no config object")
    try:
        cfg = Config.from_dict(manifest["config"])
    except ParityError as e:
        raise bad(f"config: {e}") from None
    if cfg.missing():
        raise bad(f"config: {', '.join(cfg.missing())} unknown")
    for key in ("inputs", "outputs"):
        given = manifest.get(key)
        want = {t: input_spec(cfg, t) for t in towers} if key == "inputs" else {t: output_spec(cfg) for t in towers}
        if not isinstance(given, dict) or any(given.get(t) != want[t] for t in towers):
            raise bad(f"{key}: not those of its config's towers, {json.dumps(want)}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files: not an object of file names and their SHA-256")
    for name, digest in files.items():
        if not _plain_name(name):
            raise bad(f"files: {name!r} is not the name of a file in the folder")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"files: {name!r} has no SHA-256")
    verification = manifest.get("verification")
    gate = verification.get("gate") if isinstance(verification, dict) else None
    if not isinstance(gate, dict) or not all(is_number(gate.get(k)) for k in GATE):
        raise bad(f"verification.gate: not numbers {', '.join(GATE)}")
    return Manifest(fmt, towers, cfg, {k: gate[k] for k in GATE}, files)


def within_limits(cfg, path: Path) -> None:
    """ExportError where a manifest's config asks for inputs or outputs larger than any CLIP's (LIMITS)."""
    for name, limit in LIMITS.items():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if value > limit:
            raise ExportError(f"not a parity export manifest ({name} {value}: more than the {limit} "
                              "of any CLIP; give the checkpoint to check it against)", path=path)


def recorded(folder: Folder, towers, inputs: dict, width: int) -> dict:
    """The reference recorded at export, each input set's features of exactly [batch, width] finite
    numbers and a noise floor: ExportError otherwise."""
    path = folder.path / REFERENCE
    ref = folder.json(REFERENCE, bounded_json.REFERENCE,
                      f"missing: no recorded reference for {', '.join(towers)}; give the checkpoint to compare with")
    out = {}
    for tower in towers:
        out[tower] = {}
        for name, x in inputs[tower].items():
            entry = ref.get(tower, {}).get(name) if isinstance(ref.get(tower), dict) else None
            want = (len(x), width)
            features = entry.get("features") if isinstance(entry, dict) else None
            noise = entry.get("noise") if isinstance(entry, dict) else None
            ok = (isinstance(features, list) and len(features) == want[0] and
                  all(isinstance(row, list) and len(row) == width and all(map(is_number, row)) for row in features))
            if not ok or not is_number(noise) or not 0 <= noise < float("inf"):
                raise ExportError(f"not a recorded reference: {tower} {name} wants features of "
                                  f"[{want[0]}, {want[1]}] numbers and a noise floor", path=path)
            features = np.asarray(features, np.float64)
            if not np.isfinite(features).all():
                raise ExportError(f"not a recorded reference: {tower} {name} holds a number that is not finite", path=path)
            scale = float(np.median(np.abs(features))) if features.size else 0.0
            if noise > RECORDED_NOISE * scale:
                raise ExportError(f"not a recorded reference: {tower} {name} records a float32 noise floor "
                                  f"of {noise:.3g}, more than {RECORDED_NOISE:g} of its features' median magnitude "
                                  f"({scale:.3g}); float32's own is far smaller, and it would widen the gate", path=path)
            out[tower][name] = {"features": features, "noise": float(noise)}
    return out


def folder_bytes(cfg) -> int:
    """The most an export of `cfg` may hold in files: its float32 weights twice over (a graph's weights,
    and room for what a runtime's format adds) and 256 MiB for programs, vocabularies and references.
    A file past it is no export of this model, and is refused before it is hashed or loaded."""
    weights = sum(math.prod(shape) for shape in layouts.HUB.shapes(cfg).values()) * 4
    return 2 * weights + 256 * MiB


def changed_files(folder: Folder, manifest, limit: int) -> list[str]:
    """The manifest's files whose SHA-256 is not the one it records (or that are missing), each read
    through the folder's descriptor, by its plain name, not following links. Every graph the check runs
    must be among them, and no file may be larger than `limit` (apparent or stored)."""
    unrecorded = [n for t in manifest.towers for n in graph_names(manifest.format, t) if n not in manifest.files]
    if unrecorded:
        raise ExportError(f"not a parity export manifest (it records no SHA-256 for "
                          f"{', '.join(unrecorded)})", path=folder.path / MANIFEST)
    changed, total = [], 0
    for name, digest in sorted(manifest.files.items()):
        with folder.open(name) as source:
            if source is not None:
                total += source.size
                if total > limit:
                    raise ExportError(f"the export's files take more than the {limit} bytes an "
                                      "export of its model can hold", path=source.name)
            if source is None or sha256(source) != digest:
                changed.append(name)
    return changed


