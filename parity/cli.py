"""The `parity` command: a thin click layer over the library."""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import ParityError
from .variants import VARIANTS, ConfigError, get_config


class UserError(click.ClickException):
    """A one-line error about the user's input: printed without a traceback, exit status 2."""

    exit_code = 2


def _fail(error: Exception, debug: bool):
    if debug:
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise UserError(message + ("" if isinstance(error, ParityError) else " (run with --debug for the traceback)"))


class _Stages:
    """A progress bar on a terminal (stderr) for conversions that take more than a moment."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def __call__(self, label: str):
        if self.enabled:
            self.done += 1
            filled = int(24 * (self.done - 1) / self.total)
            click.echo(f"\r[{'#' * filled}{'.' * (24 - filled)}] {label:<60.60}", nl=False, err=True)

    def close(self):
        if self.enabled and self.done:
            click.echo("\r" + " " * 90 + "\r", nl=False, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="parity")
def main():
    """Matching PyTorch and PaddlePaddle CLIP models, checkpoint conversion, numerical verification.

    \b
    Examples:
      parity variants
      parity verify-all --report-dir reports
    """


@main.command()
def variants():
    """List the supported variants and their hyper-parameters.

    \b
    Example:
      parity variants
    """
    click.echo(f"{'name':16} {'embed':>5} {'res':>4} {'vision layers':>14} {'width':>5} {'patch':>5} {'text w/h/l':>11}")
    for c in VARIANTS.values():
        layers = ",".join(map(str, c.vision_layers)) if not c.is_vit else str(c.vision_layers)
        click.echo(f"{c.name:16} {c.embed_dim:5} {c.image_resolution:4} {layers:>14} {c.vision_width:5} "
                   f"{c.vision_patch_size or '-':>5} {c.transformer_width:>4}/{c.transformer_heads}/{c.transformer_layers}")


@main.command("verify-all")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Where verify-all.md and verify-all.json are written.")
@click.option("--variant", "names", multiple=True, help="Only these variants (repeatable). Default: all nine.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic weights.")
@click.option("--atol", default=1e-4, show_default=True, help="Absolute tolerance (raised to 4x the fp32 noise floor).")
def verify_all(report_dir: Path, names: tuple[str, ...], seed: int, atol: float):
    """Every variant through parity's torch and Paddle models on the canonical input.

    Uses deterministic synthetic weights (cached under .cache/), compares logits and features, writes
    REPORT_DIR/verify-all.md and .json, and exits 1 when any variant disagrees beyond its bound.

    \b
    Example:
      parity verify-all --variant RN50 --variant ViT-B/32
    """
    from .harness import verify_state_dict
    from .report import markdown_table, write_verify_all
    from .synthetic import cached_state_dict

    try:
        configs = [get_config(n) for n in names] if names else list(VARIANTS.values())
    except ConfigError as e:
        raise click.ClickException(f"{e}. Run `parity variants` for the list.")
    start, results = time.perf_counter(), []
    for i, config in enumerate(configs, 1):
        click.echo(f"[{i}/{len(configs)}] {config.name} ...", nl=False)
        state = cached_state_dict(config, seed)
        result = verify_state_dict(state, f"synthetic seed {seed}", config, atol=atol).to_dict()
        del state
        gc.collect()
        results.append(result)
        click.echo(f" {'PASS' if result['passed'] else 'FAIL'} |Δ logit| {result['logit_delta']:.2e} "
                   f"({result['seconds']:.1f} s)")
    total = time.perf_counter() - start
    md_path, json_path = write_verify_all(results, report_dir, total)
    click.echo("\n" + markdown_table(results))
    click.echo(f"\nwrote {md_path} and {json_path}; total {total:.1f} s")
    sys.exit(0 if all(r["passed"] for r in results) else 1)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["paddle", "torch", "safetensors"]), required=True,
              help="Target format: Paddle .pdparams, torch .pt state dict, or .safetensors.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output file. Default: SRC with the target's suffix (.pdparams, .pt, .safetensors).")
@click.option("--variant", default=None, help="Expected variant (e.g. ViT-B/32); checked against the shapes.")
@click.option("--dtype", type=click.Choice(["keep", "float32", "float16"]), default=None,
              help="Floating dtype of the output. Default: float32 in the Paddle layout (what Paddle "
                   "loads on a CPU), the source dtypes in the torch layout.")
@click.option("--layout", type=click.Choice(["torch", "paddle"]), default=None,
              help="Key layout of a safetensors output. [default: torch]")
@click.option("--force", is_flag=True, help="Replace an existing output (never the input).")
@click.option("--strict", is_flag=True, help="Refuse tensors holding NaN or Inf (default: warn).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def convert(src: Path, to: str, out: Path | None, variant: str | None, dtype: str | None, layout: str | None,
            force: bool, strict: bool, debug: bool):
    """Convert a CLIP checkpoint between torch, Paddle and safetensors.

    SRC may be an official TorchScript release (.pt), a torch state dict (.pt/.pth/.bin, also wrapped in
    'state_dict'/'model' or with a 'module.' prefix), a Paddle .pdparams, or a .safetensors file; the
    format is read from the content, and no code in the file is ever run. The output is written to a
    temporary file, reloaded and compared tensor by tensor, then renamed into place. Exit status 0 on
    success, 2 on bad input (one line on stderr).

    \b
    Examples:
      parity convert RN50.pt --to paddle                # -> RN50.pdparams (float32)
      parity convert RN50.pdparams --to torch -o RN50-back.pt
      parity convert ViT-B-32.pt --to safetensors --layout paddle
    """
    from .checkpoint import convert as run

    stages = _Stages(2, sys.stderr.isatty() and src.is_file() and src.stat().st_size > 50_000_000)
    try:
        result = run(src, to, out, variant=variant, dtype=dtype, layout=layout, force=force, strict=strict,
                     stage=stages)
    except Exception as e:  # every error is one line unless --debug
        stages.close()
        _fail(e, debug)
    stages.close()
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    for line in result.source.notes:
        click.echo(f"note: {line}", err=True)
    click.echo(result.summary())


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def info(file: Path, as_json: bool, debug: bool):
    """Describe a checkpoint: format, layout, variant, tensors, dtypes, bytes, SHA-256, official or not.

    The first thing to run on a file one did not make: nothing in it is executed.

    \b
    Example:
      parity info RN50.pt
    """
    import json

    from .checkpoint import describe

    try:
        fields = describe(file)
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
        click.echo(f"{key:10} {value}")
