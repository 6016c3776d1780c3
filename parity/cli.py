"""The `parity` command: a thin click layer over the library (what the commands share: cli_support)."""
from __future__ import annotations

from pathlib import Path

import click

from .version import __version__
from . import cli_verify, layouts as layout_registry
from .cli_support import (Main, UserError, config_option, debug_option, library_errors, progress_bar,
                          show_conversion, show_info, show_layouts, show_variants)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="parity")
@debug_option
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
    show_variants()


@main.command()
def layouts():
    """List the checkpoint layouts parity reads and writes (the hub first).

    \b
    Example:
      parity layouts
    """
    show_layouts()


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice([*layout_registry.LAYOUTS, "torch", "safetensors"]), required=True,
              help="Target layout, in its own file convention (openai: .pt, paddle: .pdparams); torch is "
                   "openai's .pt, safetensors a .safetensors file in --layout.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output file. Default: SRC with the target's suffix (.pdparams, .pt, .safetensors).")
@config_option
@click.option("--dtype", type=click.Choice(["keep", "float32", "float16"]), default=None,
              help="Floating dtype of the output. Default: float32 in a Paddle layout (what Paddle "
                   "loads on a CPU), the source dtypes in a torch layout.")
@click.option("--layout", type=click.Choice([*layout_registry.LAYOUTS, "torch"]), default=None,
              help="Key layout of a safetensors output (torch: openai). [default: openai]")
@click.option("--force", is_flag=True, help="Replace an existing output (never the input).")
@click.option("--strict", is_flag=True, help="Refuse tensors holding NaN or Inf (default: warn).")
@click.option("--tower", type=click.Choice(["image", "text"]), default=None,
              help="Write this tower of a whole CLIP alone (e.g. a diffusion text encoder, a VLM vision tower).")
@click.option("--with-projection", "projection", is_flag=True,
              help="With --tower: keep its projection (CLIPTextModelWithProjection, CLIPVisionModelWithProjection).")
@click.option("--copy-rest", is_flag=True, help="A pipeline folder: copy its other components as they are.")
@debug_option
@library_errors
def convert(src: Path, to: str, out: Path | None, config: str | None, dtype: str | None, layout: str | None,
            force: bool, strict: bool, tower: str | None, projection: bool, copy_rest: bool):
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
      parity convert ViT-L-14.pt --tower text --to hf -o sd-text-encoder
      parity convert stable-diffusion-xl-base-1.0/ --to paddlenlp -o sdxl-paddle   # a pipeline folder

    A pipeline folder (model_index.json) has each CLIP tower subfolder converted under the same name in
    OUT; the other components are listed as skipped, or copied as they are with --copy-rest.
    """
    from .io.convert import convert as run, default_output
    from .io.pipeline import convert_pipeline, is_pipeline

    if projection and not tower or tower and is_pipeline(src):
        raise UserError("--tower takes one tower of a CLIP checkpoint, not of a pipeline; --with-projection goes with it")
    with progress_bar(src) as stages:
        if is_pipeline(src):
            result = convert_pipeline(src, to, out or default_output(src, "folder", to), copy_rest=copy_rest,
                                      force=force, dtype=dtype, strict=strict, stage=stages)
        else:
            result = run(src, to, out, config=config, dtype=dtype, layout=layout, force=force, strict=strict,
                         stage=stages, tower=tower, projection=projection)
    return lambda: show_conversion(result)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
@debug_option
@library_errors
def info(file: Path, config: str | None, as_json: bool):
    """Describe a checkpoint: format, layout, model and config (and where the config came from), tensors,
    dtypes, bytes, SHA-256, official or not.

    The first thing to run on a file one did not make: nothing in it is executed. For a pipeline folder
    (model_index.json): its CLIP tower subfolders and their configs, and its other components.

    \b
    Example:
      parity info RN50.pt
      parity info stable-diffusion-xl-base-1.0/
    """
    from .io.checkpoint import describe
    from .io.pipeline import describe as describe_pipeline, is_pipeline

    fields = (describe_pipeline if is_pipeline(file) else describe)(file, config)
    return lambda: show_info(fields, as_json)


for _command in cli_verify.COMMANDS:
    main.add_command(_command)
