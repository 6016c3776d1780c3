"""The `parity` command: a thin click layer over the library (what the commands share: cli_support)."""
from __future__ import annotations

from pathlib import Path

import click

from .version import __version__
from . import layouts as layout_registry
from .cli_support import (TOWER_CHOICES, Main, UserError, config_option, debug_option, export_gate, gate,
                          library_errors, outputs_option, progress_bar, report_options, run_verify_all,
                          show_conversion, show_export, show_info, show_layouts, show_logits, show_variants,
                          show_verified, tower_option)


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
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("other", type=click.Path(path_type=Path), required=False)
@config_option
@tower_option
@outputs_option
@report_options
@click.option("--layers", is_flag=True, help="Compare every module's output (always done on a failure).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
@debug_option
@library_errors
def verify(checkpoint: Path, other: Path | None, config: str | None, tower: str, outputs: str | None, atol: float,
           rtol: float, noise_factor: float, device: str, report_dir: Path, layers: bool, as_json: bool):
    """Run a checkpoint through parity's torch and Paddle CLIP on identical inputs and compare.

    With one file, each framework gets it (converted in memory for the other); with a torch checkpoint
    and a Paddle one, in either order, each framework loads its own file as it is. Inputs: the
    reference table's canonical pair and scikit-image's photographs with captions. Writes
    REPORT_DIR/<variant>.json, .md and -similarity.png. Exit status 0 when every output is within
    tolerance, 1 when not (the report names the first module where the frameworks part), 2 on bad input.

    A tower alone (a diffusion pipeline's text_encoder/, a VLM's vision tower) is compared on what its
    users consume: the last and penultimate hidden states, every token, the pooled output and the
    projected embeds; --outputs picks those that gate the verdict.

    \b
    Examples:
      parity verify RN50.pt
      parity verify RN50.pt RN50.pdparams --layers
      parity verify ViT-B-32.pdparams --atol 1e-5 --json
      parity verify open_clip_model.safetensors --config ViT-bigG-14 --tower text
      parity verify sdxl/text_encoder_2 --outputs penultimate_hidden_state,embeds
    """
    from .api import verify as run
    from .harness.report import write_variant

    report = run(checkpoint, other, config=config, device=device, atol=atol, rtol=rtol, layers=layers,
                 noise_factor=noise_factor, towers=TOWER_CHOICES[tower],
                 outputs=None if outputs is None else [name.strip() for name in outputs.split(",")])
    paths = write_variant(report, report_dir)
    return lambda: show_verified(report, paths, as_json)


@main.command()
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


@main.command("verify-all")
@report_options
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
    run_verify_all(names, weights_dir, seed, report_dir, device=device, atol=atol, rtol=rtol,
                   noise_factor=noise_factor)


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


@main.command()
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


@main.command("verify-export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@config_option
@export_gate
@library_errors
def verify_export(folder: Path, checkpoint: Path | None, config: str | None, atol, rtol, noise_factor,
                  as_json: bool):
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

    report = run(folder, checkpoint, config=config, **gate(atol, rtol, noise_factor))
    return lambda: show_export(report, as_json)
