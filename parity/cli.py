"""The `parity` command: a thin click layer over the library."""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import click

from . import __version__
from .variants import VARIANTS, ConfigError, get_config


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
