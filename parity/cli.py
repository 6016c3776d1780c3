"""The `parity` command: a thin click layer over the library."""
from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import ParityError, printable
from .harness.run import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR
from . import layouts as layout_registry
from .config import registry
from .config.schema import ConfigError


class UserError(click.ClickException):
    """A one-line error about the user's input: printed without a traceback, exit status 2."""

    exit_code = 2


class InternalError(click.ClickException):
    """An error that bad input does not explain: a bug in parity. Exit status 3, so that a gate can tell it
    from bad input (2) and from frameworks that disagree (1)."""

    exit_code = 3


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread, so that every `finally` runs on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StoppedError(click.ClickException):
    """One line, and the shell's status for death by that signal (128 + its number)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; nothing half-written was left behind")
        self.exit_code = 128 + signum


def _stop(signum, _frame):
    raise Stopped(signum)


def echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    """click.echo of text that may hold names from files or the command line, shown escaped."""
    click.echo(printable(text), err=err, nl=nl)


def _fail(error: Exception, debug: bool):
    if debug:
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not isinstance(error, ParityError):
        raise InternalError(printable(f"internal error, a bug in parity ({type(error).__name__}: {message}); "
                                      "run with --debug for the traceback, and report it"))
    hint = getattr(error, "cli_hint", None)
    message += f"; {hint}" if hint else ""
    raise UserError(printable(message))


def _size(path: Path) -> int:
    """The file's size for a progress bar: 0 where it cannot be told (the library then says why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Main(click.Group):
    """The command group: SIGTERM and SIGHUP end a command as SIGINT does, cleaning up on the way out."""

    def invoke(self, ctx):
        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, _stop)
        except ValueError:  # not the main thread (an embedding program's worker): leave signals alone
            pass
        try:
            return super().invoke(ctx)
        except Stopped as e:
            raise StoppedError(e.signum) from None
        except KeyboardInterrupt:
            raise StoppedError(signal.SIGINT) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Stages:
    """A progress bar on a terminal (stderr) for conversions that take more than a moment."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def __call__(self, label: str):
        if self.enabled:
            self.done += 1
            filled = int(24 * (self.done - 1) / self.total)
            click.echo(f"\r[{'#' * filled}{'.' * (24 - filled)}] {printable(label):<60.60}", nl=False, err=True)

    def close(self):
        if self.enabled and self.done:
            click.echo("\r" + " " * 90 + "\r", nl=False, err=True)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="parity")
def main():
    """Matching PyTorch and PaddlePaddle CLIP models, checkpoint conversion, numerical verification.

    \b
    Examples:
      parity convert RN50.pt --to paddle
      parity verify RN50.pt RN50.pdparams
      parity logits RN50.pdparams --framework paddle --json
      parity verify-all
    """


@main.command()
def variants():
    """List the registered models and their configs (what --config NAME gives).

    \b
    Example:
      parity variants
    """
    header = (f"{'name':21} {'embed':>5} {'res':>4} {'vision layers':>14} {'width':>5} {'patch':>5} {'heads':>5} "
              f"{'mlp':>5} {'act':>10} {'text w/h/l/mlp':>17} {'text act':>10}")
    for family in registry.FAMILIES:
        click.echo(f"{family} ({FAMILY_NOTES[family]}):")
        click.echo("  " + header)
        for e in registry.family(family):
            v, t = e.config.vision, e.config.text
            layers = str(v.layers) if v.is_vit else ",".join(map(str, v.layers))
            click.echo(f"  {e.name:21} {e.config.embed_dim:5} {v.image_size:4} {layers:>14} {v.width:5} "
                       f"{v.patch_size or '-':>5} {v.heads:>5} {v.mlp_width or '-':>5} {v.activation or 'relu':>10} "
                       f"{f'{t.width}/{t.heads}/{t.layers}/{t.mlp_width}':>17} {t.activation:>10}")


FAMILY_NOTES = {"openai": "openai/CLIP's releases, known by their SHA-256",
                "open_clip": "open_clip's configs by its own names; LAION's weights use GELU, -quickgelu QuickGELU",
                "cn_clip": "Chinese-CLIP: openai's image towers, a Chinese BERT text tower (text w/h/l/mlp: the BERT's)"}


@main.command()
def layouts():
    """List the checkpoint layouts parity reads and writes (the hub first).

    \b
    Example:
      parity layouts
    """
    click.echo(f"{'layout':10} {'framework':9} {'holds':11} {'registered models covered':44} files")
    for layout in layout_registry.LAYOUTS.values():
        covered = [e.name for e in registry.ENTRIES.values() if layout_registry.holds(layout, e.config)]
        lacks = [what for what, kinds, kind in (("ResNet", layout.KINDS, "resnet"),
                                                ("BERT", getattr(layout, "TEXT_KINDS", ("clip",)), "bert"),
                                                ("ResNet beside a BERT", getattr(layout, "BERT_KINDS", ("resnet",)),
                                                 "resnet"))
                 if kind not in kinds and not (what.startswith("ResNet ") and "resnet" not in layout.KINDS)]
        shown = (f"all {len(covered)}" if len(covered) == len(registry.ENTRIES) else
                 f"{len(covered)} of {len(registry.ENTRIES)} (no {', no '.join(lacks)})")
        click.echo(f"{layout.NAME:10} {layout.FRAMEWORK:9} {'+'.join(layout.KINDS):11} {shown:44} {layout.FILES}")


TOWER_CHOICES = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


def _tower_option(f):
    return click.option("--tower", type=click.Choice(list(TOWER_CHOICES)), default="both", show_default=True,
                        help="Which towers compute: both (and the logit), or the image or the text tower alone "
                             "(e.g. a diffusion model's text encoder). One tower is in memory at a time either way.")(f)


def _config_option(f):
    return click.option("--config", "--variant", "config", default=None, metavar="NAME|FILE.json",
                        help="The model's config where the file has none: a name from `parity variants` or a "
                             "JSON file; checked against the tensors (and the file's own config) where it has.")(f)


def _report_options(f):
    f = click.option("--atol", default=DEFAULT_ATOL, show_default=True, help="Absolute tolerance.")(f)
    f = click.option("--rtol", default=DEFAULT_RTOL, show_default=True,
                     help="Relative tolerance: |Δ| ≤ max(atol + rtol·|x|, noise factor × float32 noise floor).")(f)
    f = click.option("--noise-factor", default=NOISE_FACTOR, show_default=True,
                     help="How many times float32's own noise floor a difference may be (0: atol and rtol alone).")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                     help="auto: the GPU in both frameworks when both have one, else the CPU.")(f)
    f = click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
                     show_default=True, help="Where the reports are written.")(f)
    return f


def _verdict(report) -> str:
    d = report.differences.get("logits")
    if d is None:  # one tower
        name = next(iter(report.differences))
        d = report.differences[name]
        text = (f"{report.variant}: {'PASS' if report.passed else 'FAIL'} — {name} only |Δ| {d.max_abs:.2e} (bound "
                f"{d.bound:.1e}, {d.bound_kind}), feature cosine {report.feature_cosine:.8f}")
    else:
        text = (f"{report.variant}: {'PASS' if report.passed else 'FAIL'} — logit torch {report.torch_logit:.6f} "
                f"paddle {report.paddle_logit:.6f} |Δ| {d.max_abs:.2e} (bound {d.bound:.1e}, {d.bound_kind}), "
                f"feature cosine {report.feature_cosine:.8f}")
    if report.photos and report.photos.topk_agreement is not None:
        text += f", top-5 agreement {report.photos.topk_agreement:.0%}"
    if report.reference:
        text += f", reference {report.reference.logit:.4f} {'PASS' if report.reference.passed else 'FAIL'}"
    if report.layers:
        text += f"; first module beyond its bound: {report.layers.first_divergence or 'none'}"
    return text


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("other", type=click.Path(path_type=Path), required=False)
@_config_option
@_tower_option
@_report_options
@click.option("--layers", is_flag=True, help="Compare every module's output (always done on a failure).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def verify(checkpoint: Path, other: Path | None, config: str | None, tower: str, atol: float, rtol: float,
           noise_factor: float, device: str, report_dir: Path, layers: bool, as_json: bool, debug: bool):
    """Run a checkpoint through parity's torch and Paddle CLIP on identical inputs and compare.

    With one file, each framework gets it (converted in memory for the other); with a torch checkpoint
    and a Paddle one, in either order, each framework loads its own file as it is. Inputs: the
    reference table's canonical pair and scikit-image's photographs with captions. Writes
    REPORT_DIR/<variant>.json, .md and -similarity.png. Exit status 0 when every output is within
    tolerance, 1 when not (the report names the first module where the frameworks part), 2 on bad input.

    \b
    Examples:
      parity verify RN50.pt
      parity verify RN50.pt RN50.pdparams --layers
      parity verify ViT-B-32.pdparams --atol 1e-5 --json
      parity verify open_clip_model.safetensors --config ViT-bigG-14 --tower text
    """
    from .api import verify as run
    from .harness.report import write_variant

    try:
        report = run(checkpoint, other, config=config, device=device, atol=atol, rtol=rtol, layers=layers,
                     noise_factor=noise_factor, towers=TOWER_CHOICES[tower])
        paths = write_variant(report, report_dir)
    except Exception as e:
        _fail(e, debug)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        echo(_verdict(report))
        echo("wrote " + ", ".join(str(p) for p in paths.values()))
    sys.exit(0 if report.passed else 1)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--framework", type=click.Choice(["torch", "paddle"]), required=True,
              help="Whose model computes (the file is converted in memory when needed).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@_config_option
@_tower_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (logit, both feature vectors, ...).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def logits(checkpoint: Path, framework: str, device: str, config: str | None, tower: str, as_json: bool,
           debug: bool):
    """The canonical logit and features of one framework's model on CHECKPOINT.

    Canonical pair: image = ones/2 of shape (1, 3, R, R), text = ones (1, 77) int64.

    \b
    Examples:
      parity logits RN50.pt --framework torch
      parity logits RN50.pdparams --framework paddle --json
    """
    from .api import logits as run

    try:
        out = run(checkpoint, framework, device, config, TOWER_CHOICES[tower])
    except Exception as e:
        _fail(e, debug)
    if as_json:
        click.echo(json.dumps(out))
        return
    echo(f"{out['variant']} on {out['framework']} ({out['device']}), {out['weights']}")
    if out["logit"] is not None:
        click.echo(f"logit          {out['logit']:.6f}")
    for name in ("image", "text"):
        if f"{name}_features" in out:
            v = np.asarray(out[f"{name}_features"])
            click.echo(f"{name + ' features':14} {v.size} values, norm {np.linalg.norm(v):.6f}, first "
                       f"{v[:4].round(6).tolist()}")


@main.command("verify-all")
@_report_options
@click.option("--variant", "names", multiple=True,
              help="Only these variants (repeatable; any registered name). Default: OpenAI's nine.")
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("weights"),
              show_default=True, help="Where official files are looked for, under their release names.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic weights.")
def verify_all(atol: float, rtol: float, noise_factor: float, device: str, report_dir: Path, names: tuple[str, ...],
               weights_dir: Path, seed: int):
    """Every variant through parity's torch and Paddle models on identical inputs.

    For each variant: the release file from WEIGHTS_DIR (e.g. weights/RN50.pt, weights/ViT-B-32.pt) when
    present, labelled by its SHA-256 (official only when it is the release's) and, if official, checked
    against the reference table; otherwise deterministic synthetic weights (cached under .cache/),
    labelled synthetic. Writes REPORT_DIR/verify-all.md and .json plus one report per variant, prints the
    table, and exits 1 when any variant fails.

    \b
    Example:
      parity verify-all --variant RN50 --variant ViT-B/32
    """
    from .api import verify as verify_file
    from .harness.run import verify_state_dict
    from .harness.report import markdown_table, write_variant, write_verify_all
    from .testing.synthetic import cached_state_dict

    try:
        entries = [registry.get(n) for n in names] if names else registry.family("openai")
    except ConfigError as e:
        raise UserError(printable(f"{e}. Run `parity variants` for the list."))
    start, results = time.perf_counter(), []
    for i, entry in enumerate(entries, 1):
        real = weights_dir / entry.filename
        echo(f"[{i}/{len(entries)}] {entry.name} ({'weights from ' + str(real) if real.is_file() else 'synthetic'})"
             " ...", nl=False)
        try:
            if real.is_file():
                result = verify_file(real, config=entry.config, device=device, atol=atol, rtol=rtol,
                                     noise_factor=noise_factor)
            else:
                state = cached_state_dict(entry.config, seed)
                result = verify_state_dict(state, f"synthetic seed {seed}", entry.config, device=device, atol=atol,
                                           rtol=rtol, noise_factor=noise_factor)
                del state
            write_variant(result, report_dir)
        except ParityError as e:
            raise UserError(printable(f"{entry.name}: {e}"))
        gc.collect()
        results.append(result)
        click.echo(f" {'PASS' if result.passed else 'FAIL'} |Δ logit| {result.differences['logits'].max_abs:.2e} "
                   f"({result.seconds:.1f} s)")
    total = time.perf_counter() - start
    md_path, json_path = write_verify_all(results, report_dir, total)
    click.echo("\n" + printable(markdown_table(results), newlines=True))
    echo()
    echo(f"wrote {md_path} and {json_path}; total {total:.1f} s")
    sys.exit(0 if all(r.passed for r in results) else 1)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice([*layout_registry.LAYOUTS, "torch", "safetensors"]), required=True,
              help="Target layout, in its own file convention (openai: .pt, paddle: .pdparams); torch is "
                   "openai's .pt, safetensors a .safetensors file in --layout.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output file. Default: SRC with the target's suffix (.pdparams, .pt, .safetensors).")
@_config_option
@click.option("--dtype", type=click.Choice(["keep", "float32", "float16"]), default=None,
              help="Floating dtype of the output. Default: float32 in a Paddle layout (what Paddle "
                   "loads on a CPU), the source dtypes in a torch layout.")
@click.option("--layout", type=click.Choice([*layout_registry.LAYOUTS, "torch"]), default=None,
              help="Key layout of a safetensors output (torch: openai). [default: openai]")
@click.option("--force", is_flag=True, help="Replace an existing output (never the input).")
@click.option("--strict", is_flag=True, help="Refuse tensors holding NaN or Inf (default: warn).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def convert(src: Path, to: str, out: Path | None, config: str | None, dtype: str | None, layout: str | None,
            force: bool, strict: bool, debug: bool):
    """Convert a CLIP checkpoint between torch, Paddle and safetensors.

    SRC may be an official TorchScript release (.pt), a torch state dict (.pt/.pth/.bin, also wrapped in
    'state_dict'/'model' or with a 'module.' prefix), a Paddle .pdparams, a .safetensors file, or a
    Hugging Face, PaddleNLP or open_clip folder, in any layout of `parity layouts`; the format and layout
    are read from the content, and no code in the file is ever run. Converting needs no config (it moves tensors); a known one is written with them. The
    output is written unnamed, read back and compared tensor by tensor, then given its name. Exit status
    0 on success, 2 on bad input (one line on stderr).

    \b
    Examples:
      parity convert RN50.pt --to paddle                # -> RN50.pdparams (float32)
      parity convert RN50.pdparams --to torch -o RN50-back.pt
      parity convert ViT-B-32.pt --to safetensors --layout paddle
      parity convert CLIP-ViT-H-14-laion2B/ --to paddlenlp -o vit-h-14-paddlenlp
      parity convert open_clip_model.safetensors --config ViT-bigG-14 --to paddle
    """
    from .io.convert import convert as run

    stages = _Stages(2, sys.stderr.isatty() and _size(src) > 50_000_000)
    try:
        result = run(src, to, out, config=config, dtype=dtype, layout=layout, force=force, strict=strict,
                     stage=stages)
    except Exception as e:  # every error is one line unless --debug
        stages.close()
        _fail(e, debug)
    stages.close()
    for line in result.warnings:
        echo(f"warning: {line}", err=True)
    if result.config_warning:
        echo(f"warning: {result.config_warning}; verify and logits on it will need --config NAME|FILE.json", err=True)
    for line in result.source.notes:
        echo(f"note: {line}", err=True)
    echo(result.summary())


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def info(file: Path, config: str | None, as_json: bool, debug: bool):
    """Describe a checkpoint: format, layout, model and config (and where the config came from), tensors,
    dtypes, bytes, SHA-256, official or not.

    The first thing to run on a file one did not make: nothing in it is executed.

    \b
    Example:
      parity info RN50.pt
    """
    import json

    from .io.checkpoint import describe

    try:
        fields = describe(file, config)
    except Exception as e:
        _fail(e, debug)
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    for key, value in fields.items():
        if key == "dtypes":
            value = ", ".join(f"{d} ×{n}" for d, n in value.items())
        elif key == "notes":
            value = "; ".join(value) or "none"
        elif key in ("bytes", "parameters"):
            value = f"{value:,}"
        elif isinstance(value, dict):  # the config's fields: shown in --json
            continue
        echo(f"{key:11} {value}")


EXPORT_TOWERS = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


def _export_gate(f):
    # the gate is the command line's or parity's: an export folder's manifest records one, never sets it
    never = "never the export manifest's"
    f = click.option("--atol", default=None, type=float,
                     help=f"Absolute tolerance [default: parity's, {DEFAULT_ATOL}; {never}].")(f)
    f = click.option("--rtol", default=None, type=float,
                     help=f"Relative tolerance [default: parity's, {DEFAULT_RTOL}; {never}].")(f)
    f = click.option("--noise-factor", default=None, type=float,
                     help="Multiple of float32's noise floor a difference may be [default: parity's, "
                          f"{NOISE_FACTOR}; {never}].")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON on stdout.")(f)
    return click.option("--debug", is_flag=True, help="Show the traceback of an error.")(f)


def _export_result(report, as_json: bool):
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        echo(report.summary())
        if report.changed_files:
            echo(f"files changed since the export: {', '.join(report.changed_files)}")
    sys.exit(0 if report.passed else 1)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["paddle-inference", "onnx"]), required=True,
              help="paddle-inference: Paddle's static program (.json) and parameters (.pdiparams), for Paddle "
                   "Inference, FastDeploy, Paddle Serving; onnx: one .onnx per tower, for onnxruntime.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="The folder to write.")
@click.option("--tower", type=click.Choice(list(EXPORT_TOWERS)), default="both", show_default=True)
@_config_option
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@_export_gate
def export(checkpoint: Path, to: str, out: Path, tower: str, config: str | None, force: bool, atol, rtol,
           noise_factor, as_json: bool, debug: bool):
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

    options = {k: v for k, v in (("atol", atol), ("rtol", rtol), ("noise_factor", noise_factor)) if v is not None}
    try:
        report = run(checkpoint, to, out, towers=EXPORT_TOWERS[tower], config=config, force=force, **options)
    except Exception as e:
        _fail(e, debug)
    _export_result(report, as_json)


@main.command("verify-export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@_config_option
@_export_gate
def verify_export(folder: Path, checkpoint: Path | None, config: str | None, atol, rtol, noise_factor,
                  as_json: bool, debug: bool):
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
    """
    from .exporter.core import verify_export as run

    options = {k: v for k, v in (("atol", atol), ("rtol", rtol), ("noise_factor", noise_factor)) if v is not None}
    try:
        report = run(folder, checkpoint, config=config, **options)
    except Exception as e:
        _fail(e, debug)
    _export_result(report, as_json)
