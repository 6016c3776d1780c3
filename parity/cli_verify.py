"""The commands that compute: verify, logits, verify-all, export and verify-export (registered on `parity`'s
group in cli.py; what the commands share: cli_support)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_support import (TOWER_CHOICES, UserError, config_option, debug_option, debugging, echo, export_gate, gate,
                          junit_option, library_errors, outputs_option, report_options, show_export, show_logits,
                          show_verified, tower_option)
from .config.registry import FAMILIES
from .errors import ParityError, printable


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("other", type=click.Path(path_type=Path), required=False)
@config_option
@tower_option
@outputs_option
@report_options
@click.option("--layers", is_flag=True, help="Compare every module's output (always done on a failure).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
@click.option("--images", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Your own images (a folder), searched by your captions in place of the photographs.")
@click.option("--texts", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Your own captions, one a line (UTF-8); goes with --images.")
@click.option("--skip-bad-images", is_flag=True,
              help="Skip an unreadable image (the report names it). Default: refuse it (exit 2).")
@click.option("--batch", default=16, show_default=True, help="Images or captions per batch: bounds the memory.")
@junit_option
@debug_option
@library_errors
def verify(checkpoint: Path, other: Path | None, config: str | None, tower: str, outputs: str | None, atol: float,
           rtol: float, noise_factor: float, device: str, report_dir: Path, quick: bool, layers: bool, as_json: bool,
           images: Path | None, texts: Path | None, skip_bad_images: bool, batch: int, junit: Path | None):
    """Run a checkpoint through parity's torch and Paddle CLIP on identical inputs and compare.

    With one file, each framework gets it (converted in memory for the other); with a torch checkpoint
    and a Paddle one, in either order, each framework loads its own file as it is. Inputs: the
    reference table's canonical pair and scikit-image's photographs with captions. Writes
    REPORT_DIR/<variant>.json, .md and -similarity.png. Exit status 0 when every output is within
    tolerance, 1 when not (the report names the first module where the frameworks part), 2 on bad input.

    A tower alone (a diffusion pipeline's text_encoder/, a VLM's vision tower) is compared on what its
    users consume: the last and penultimate hidden states, every token, the pooled output and the
    projected embeds; --outputs picks those that gate the verdict.

    With --images DIR and --texts FILE, your own images and captions take the photographs' place, through
    the model's own preprocessing and tokenizer, --batch at a time: each embedding is compared, and text
    -> image and image -> text search query by query (top-k agreement, rank correlation, the first query
    whose ranking differs), which gates the verdict. An unreadable image (truncated, corrupt, or a header
    claiming a decompression bomb's size) is named in one line and refused, or skipped with
    --skip-bad-images.

    \b
    Examples:
      parity verify RN50.pt
      parity verify RN50.pt RN50.pdparams --layers
      parity verify ViT-B-32.pdparams --atol 1e-5 --json
      parity verify open_clip_model.safetensors --config ViT-bigG-14 --tower text
      parity verify sdxl/text_encoder_2 --outputs penultimate_hidden_state,embeds
      parity verify RN50.pt RN50.pdparams --junit junit.xml
      parity verify ViT-B-32.pt --images photos/ --texts captions.txt --skip-bad-images
    """
    from .api import verify as run
    from .harness.report import write_variant

    report = run(checkpoint, other, config=config, device=device, atol=atol, rtol=rtol, layers=layers,
                 noise_factor=noise_factor, towers=TOWER_CHOICES[tower],
                 outputs=None if outputs is None else [name.strip() for name in outputs.split(",")],
                 images=images, texts=texts, skip_bad_images=skip_bad_images, batch=batch, quick=quick)
    paths = write_variant(report, report_dir)
    if junit is not None:
        from .harness.junit import verify_suite
        write_junit(junit, [verify_suite(report)], f"parity verify {checkpoint}")
    return lambda: show_verified(report, paths, as_json)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--framework", type=click.Choice(["torch", "paddle"]), required=True,
              help="Whose model computes (the file is converted in memory when needed).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@config_option
@tower_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (logit, both feature vectors, ...).")
@debug_option
@library_errors
def logits(checkpoint: Path, framework: str, device: str, config: str | None, tower: str, as_json: bool):
    """The canonical logit and features of one framework's model on CHECKPOINT.

    Canonical pair: image = ones/2 of shape (1, 3, R, R), text = ones (1, 77) int64. For a tower alone:
    its last_hidden_state, penultimate_hidden_state, pooled and (with a projection) embeds, which --json
    prints as nested lists.

    \b
    Examples:
      parity logits RN50.pt --framework torch
      parity logits RN50.pdparams --framework paddle --json
      parity logits sd-text-encoder/ --framework paddle --json
    """
    from .api import logits as run

    out = run(checkpoint, framework, device, config, TOWER_CHOICES[tower])
    return lambda: show_logits(out, as_json)


@click.command("verify-all")
@report_options
@click.option("--family", type=click.Choice(["all", *FAMILIES]), default=None,
              help="Every registered model of this family (all: every one). Default: openai.")
@click.option("--variant", "names", multiple=True,
              help="Only these variants (repeatable; any registered name, of --family where it is given).")
@click.option("--shard", default=None, metavar="I/N",
              help="Of the chosen variants, every N-th from the I-th: N jobs (I = 1..N) run each once.")
@click.option("--list", "listing", is_flag=True, help="Print the chosen variants, one a line, and run none.")
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("weights"),
              show_default=True, help="Where official files are looked for, under their release names.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic weights.")
@junit_option
@debug_option
def verify_all(atol: float, rtol: float, noise_factor: float, device: str, report_dir: Path, quick: bool, family: str | None,
               names: tuple[str, ...], shard: str | None, listing: bool, weights_dir: Path, seed: int,
               junit: Path | None):
    """Every variant through parity's torch and Paddle models on identical inputs.

    For each variant: the release file from WEIGHTS_DIR (e.g. weights/RN50.pt, weights/ViT-B-32.pt) when
    present, labelled by its SHA-256 (official only when it is the release's) and, if official, checked
    against the reference table; otherwise deterministic synthetic weights (cached under .cache/),
    labelled synthetic. Big models run one tower at a time. Writes REPORT_DIR/verify-all.md and .json
    plus one report per variant, prints the table (naming the shard), and exits 1 when any variant fails.

    \b
    Examples:
      parity verify-all --variant RN50 --variant ViT-B/32
      parity verify-all --quick
      parity verify-all --family all --shard 2/3 --list
      parity verify-all --family open_clip --shard 1/4 --junit junit.xml
    """
    selection = choose(family, names, shard)
    if listing:
        show_selection(selection)
        return
    run_verify_all(selection, weights_dir, seed, report_dir, junit, device=device, atol=atol, rtol=rtol,
                   noise_factor=noise_factor, quick=quick)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["paddle-inference", "onnx"]), required=True,
              help="paddle-inference: Paddle's static program (.json) and parameters (.pdiparams), for Paddle "
                   "Inference, FastDeploy, Paddle Serving; onnx: one .onnx per tower, for onnxruntime.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="The folder to write.")
@click.option("--tower", type=click.Choice(list(TOWER_CHOICES)), default="both", show_default=True)
@config_option
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@export_gate
@library_errors
def export(checkpoint: Path, to: str, out: Path, tower: str, config: str | None, force: bool, atol, rtol,
           noise_factor, as_json: bool):
    """Export a checkpoint's towers for deployment, then prove the export computes what parity's torch
    model computes.

    Any layout parity reads. Each tower becomes a graph with a dynamic batch and the model's own
    context, written with preprocess.json, the tokenizer's files and manifest.json (source and its
    SHA-256, inputs and outputs, every file's SHA-256, the torch reference outputs, the result). Each
    graph is loaded in its own runtime (a process of its own, its memory bounded) and run on the
    canonical pair and the photographs (a batch of 3, then batches of 1), under verify's element-wise
    gate: the tolerances given, else parity's; the manifest records them. Exit status 0 when it passes,
    1 when not (the folder is written either way, its manifest says which), 2 on bad input.

    \b
    Examples:
      parity export ViT-B-32.pt --to paddle-inference -o clip-vit-b-32-pi
      parity export RN50.pt --to onnx -o clip-rn50-onnx --tower image
    """
    from .exporter.core import export as run

    report = run(checkpoint, to, out, towers=TOWER_CHOICES[tower], config=config, force=force,
                 **gate(atol, rtol, noise_factor))
    return lambda: show_export(report, as_json)


@click.command("verify-export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@config_option
@export_gate
@junit_option
@library_errors
def verify_export(folder: Path, checkpoint: Path | None, config: str | None, atol, rtol, noise_factor,
                  as_json: bool, junit: Path | None):
    """Check an export folder again: load it in its runtime and hold it to parity's torch model on
    CHECKPOINT, or, without one, to the reference outputs its manifest recorded at export time.

    For a deployment pipeline's CI. Exit status 0 when every output is within the gate, 1 when not
    (e.g. a parameters file swapped for another model's), 2 for a missing, unreadable or malformed file
    or a graph its runtime cannot run within a CLIP's memory. The gate is the tolerances given, else
    parity's: never the manifest's, which is the folder's own claim (where it records another, the
    result says so). Without CHECKPOINT the check proves only that the folder agrees with itself, not
    with any model: give the checkpoint to prove what it computes. Files whose SHA-256 differs from the
    manifest's are named.

    \b
    Examples:
      parity verify-export clip-vit-b-32-pi
      parity verify-export clip-vit-b-32-pi ViT-B-32.pt --json
      parity verify-export clip-vit-b-32-pi ViT-B-32.pt --junit junit.xml
    """
    from .exporter.core import verify_export as run

    report = run(folder, checkpoint, config=config, **gate(atol, rtol, noise_factor))
    if junit is not None:
        from .harness.junit import export_suite
        write_junit(junit, [export_suite(report)], f"parity verify-export {folder}")
    return lambda: show_export(report, as_json)




# ---------------------------------------------------------------- verify-all and JUnit
def show_steps():
    """verify-all's progress, one call per Step: a variant as it starts, then on the same line its result;
    for a variant that takes over 30 s, a line per stage in between, and its result on a line of its own."""
    staged: set[int] = set()  # the variants that have shown stage lines
    return lambda step: show_step(step, staged)


def show_step(step, staged: set[int]) -> None:
    from .harness.report import logit_line

    if step.stage is not None:
        if step.index not in staged:  # the first stage line of this variant: off the variant's line
            staged.add(step.index)
            click.echo()
        echo(f"    {step.stage}")
    elif step.report is None:
        echo(f"[{step.index}/{step.total}] {step.entry.name} "
             f"({'weights from ' + str(step.weights) if step.weights else 'synthetic'}) ...", nl=False)
    else:
        click.echo(f"{'    ->' if step.index in staged else ''} {logit_line(step.report)}")


def choose(family: str | None, names, shard: str | None):
    """verify-all's selection (harness.sweep.select), bad names or shards as UserError."""
    from .errors import ConfigError
    from .harness.sweep import parse_shard, select

    try:
        return select(family, names, parse_shard(shard) if shard else None)
    except ParityError as e:
        hint = ". Run `parity variants` for the list" if isinstance(e, ConfigError) else ""
        raise UserError(printable(f"{e}{hint}."))


def show_selection(selection) -> None:
    """--list: the chosen variants, one a line (stdout), and what they are (stderr)."""
    for entry in selection.entries:
        echo(entry.name)
    echo(selection.describe(), err=True)


def run_verify_all(selection, weights_dir: Path, seed: int, report_dir: Path, junit: Path | None,
                   **gate_options) -> None:
    """`parity verify-all`: the sweep, its table and its files; exits 1 when any variant fails."""
    import time

    from .harness.report import markdown_table, write_verify_all
    from .harness.sweep import Stopped, sweep

    start = time.perf_counter()
    name = f"parity verify-all, {selection.describe()}"
    try:
        results = sweep(selection.entries, weights_dir, seed, report_dir, show_steps(), **gate_options)
    except ParityError as e:  # its message names the variant; a CI gate still gets its JUnit, the error in it
        if isinstance(e, Stopped):
            click.echo(" stopped")  # the variant's progress line ends before the error's own line
            if junit is not None:
                from .harness.junit import stopped_suite, verify_suite
                write_junit(junit, [*map(verify_suite, e.done), stopped_suite(e.variant, str(e))], name)
        if debugging():
            raise
        raise UserError(printable(str(e)))
    total = time.perf_counter() - start
    md_path, json_path = write_verify_all(results, report_dir, total, selection.describe())
    click.echo("\n" + printable(markdown_table(results), newlines=True))
    echo()
    echo(f"variants: {selection.describe()}")
    echo(f"wrote {md_path} and {json_path}; total {total:.1f} s")
    if junit is not None:
        from .harness.junit import verify_suite
        write_junit(junit, [verify_suite(r) for r in results], name)
    sys.exit(0 if all(r.passed for r in results) else 1)


def write_junit(path: Path, suites, name: str) -> None:
    """JUnit XML of `suites` (harness.junit's), with its path on stderr."""
    from .harness import junit

    echo(f"wrote {junit.write(path, suites, name)}", err=True)


COMMANDS = (verify, logits, verify_all, export, verify_export)
