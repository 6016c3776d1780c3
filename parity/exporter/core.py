"""The two entry points: `export` (write a checkpoint's towers as graphs, check them in their runtimes,
name the folder) and `verify_export` (check a folder again, against the checkpoint or its own record)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .. import layouts
from .. import towers as kinds
from ..config.schema import a_tower
from ..errors import CheckpointError, OutputExistsError, ParityError
from ..harness.gate import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR
from ..models.frameworks import require
from ..io.formats.temps import staging_folder
from ..io.formats.folders import refuse_overlap
from .contents import write_folder
from .graphs import write_graphs
from .manifest import Folder, changed_files, folder_bytes, read_manifest, recorded, within_limits
from .spec import FORMATS, MANIFEST, TOWERS, ExportError, graph_names
from .verification import SELF_CHECK, ExportReport, check, given_gate, inputs_for, reference


def export(checkpoint, to: str, out, *, towers=TOWERS, config=None, force: bool = False, atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, noise_factor: float = NOISE_FACTOR) -> ExportReport:
    """Export CHECKPOINT's towers to `to` ("paddle-inference" or "onnx") in the folder `out`, then load each
    in its runtime and hold it to parity's torch model (canonical pair and photographs, batches of 3
    and 1). The folder is named only when complete; it is written when the check fails too (its
    manifest says so), and `ExportReport.passed` is the gate.

    >>> parity.export("ViT-B-32.pt", "paddle-inference", "clip-pi").passed    # doctest: +SKIP
    True
    """
    from ..api import computable
    from ..io.checkpoint import opened

    require("verify", "exporting")  # the torch reference and its photographs; Paddle's runtime
    if to == "onnx":
        require("export", "exporting to ONNX")
    out, towers = _destination(checkpoint, to, out, towers, config, force)
    start = time.perf_counter()
    with opened(checkpoint, config=config) as ck:
        computable(ck)
        cfg = ck.config
        if not cfg.whole:  # its graphs would give its features only, not the hidden states its users consume
            raise ParityError(f"this model is {a_tower(cfg.towers[0])} alone, and parity exports whole CLIPs "
                              "(one tower of one with --tower); verify and logits compute a tower alone",
                              path=ck.path)
        plan_torch = ck.plan_in(layouts.HUB.NAME)
        inputs = inputs_for(cfg, ck.vocab_file)
        ref = reference(plan_torch, cfg, inputs, towers)
        # the graphs' libraries write by name: never the output itself
        with staging_folder(out.parent) as staging:
            plan = plan_torch if to == "onnx" else ck.plan_in(layouts.paddle.NAME, "float32")
            write_graphs(to, plan, cfg, towers, staging)
            results = check(staging, to, towers, ref, inputs, atol, rtol, noise_factor)
            report = ExportReport(str(out), to, towers, results, f"checkpoint {ck.path}",
                                  {"atol": atol, "rtol": rtol, "noise_factor": noise_factor},
                                  time.perf_counter() - start)
            write_folder(out, staging, ck, plan_torch, report, ref, force)
    report.seconds = time.perf_counter() - start
    return report


def _destination(checkpoint, to: str, out, towers, config, force: bool) -> tuple[Path, list[str]]:
    """`export`'s folder and towers (in parity's order), refused before anything is read or written: an
    unknown format, a folder over the source or its config file, one that exists (without `force`), or
    one whose parent is not a folder."""
    if to not in FORMATS:
        raise ParityError(f"unknown export format {to!r}: use {' or '.join(FORMATS)}")
    out = Path(out)
    # before anything is written: the export never lands in or over its source or its config file
    refuse_overlap(out, checkpoint, config if isinstance(config, (str, os.PathLike)) else None)
    towers = [t for t in TOWERS if t in towers]
    if not force and (out.exists() or out.is_symlink()):
        raise OutputExistsError(f"{out} already exists")
    if not out.parent.is_dir():
        raise CheckpointError("no such folder to write the export in", path=out.parent)
    return out, towers


def verify_export(folder, checkpoint=None, *, config=None, atol: float | None = None, rtol: float | None = None,
                  noise_factor: float | None = None) -> ExportReport:
    """Load an export folder in its runtime and hold it, by verify's gate, to parity's torch model on
    `checkpoint` (the outputs computed afresh), or without one to the reference its manifest recorded,
    which proves only that the folder agrees with itself.

    The gate's bounds are those given, else parity's defaults: never the manifest's, which is the
    folder's own claim (a folder that records a loose gate could pass anything). Where the manifest
    records another gate, the report says so (`manifest_gate`). Nothing is built from the manifest's
    numbers before they are checked: with a checkpoint, its config must be the manifest's; without,
    the manifest's config must lie within LIMITS and the reference must have the shapes it says.
    ExportError for a missing, unreadable or malformed file, or a runtime that fails on it."""
    from ..api import computable
    from ..io.checkpoint import opened

    require("verify", "checking an export")
    start = time.perf_counter()
    gate = given_gate(atol, rtol, noise_factor)
    with Folder(folder) as opened_folder:
        manifest = read_manifest(opened_folder)
        fmt, towers, cfg = manifest.format, manifest.towers, manifest.config
        unlisted = [t for t in TOWERS if t not in towers and any(
            os.path.lexists(opened_folder.path / name) for name in graph_names(fmt, t))]
        if unlisted:  # a graph the check would never run: the folder is not what its manifest says
            raise ExportError(f"holds the {' and '.join(unlisted)} tower's graph, which its "
                              f"manifest does not list ({', '.join(towers)} only)", path=opened_folder.path)
        vocab, vocabulary = None, kinds.text(cfg).vocabulary
        if vocabulary:  # the text tower's vocabulary: the folder's, a regular file there, not a link
            with opened_folder.open(vocabulary) as source:
                vocab = None if source is None else opened_folder.path / vocabulary
        if checkpoint is not None:
            with opened(checkpoint, config=config) as ck:  # the checkpoint says what the model is
                computable(ck)
                if ck.config != cfg:
                    raise ExportError(f"{checkpoint} holds another model than the export ({ck.config.describe()}; "
                                      f"the export: {cfg.describe()})")
                inputs = inputs_for(cfg, vocab)
                ref = reference(ck.plan_in(layouts.HUB.NAME), cfg, inputs, towers)
            against = f"checkpoint {checkpoint}"
        else:
            within_limits(cfg, opened_folder.path / MANIFEST)
            inputs = inputs_for(cfg, vocab)
            ref = recorded(opened_folder, towers, inputs, cfg.embed_dim)
            against = SELF_CHECK
        changed = changed_files(opened_folder, manifest, folder_bytes(cfg))
        results = check(opened_folder.path, fmt, towers, ref, inputs, **gate)
    return ExportReport(str(opened_folder.path), fmt, towers, results, against, gate, time.perf_counter() - start,
                        changed, manifest.gate if manifest.gate != gate else None)
