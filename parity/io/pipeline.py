"""Pipeline folders: a diffusers (or ppdiffusers) pipeline's `model_index.json` names its components, each
a subfolder. Those that are CLIP towers (`text_encoder/`, `text_encoder_2/`, `image_encoder/`: transformers'
or PaddleNLP's CLIPTextModel, ..., CLIPVisionModelWithProjection) are converted one by one, under the same
subfolder names; everything else (UNet, VAE, scheduler, tokenizers) is listed as skipped, or copied byte for
byte on request. The output folder is built beside its name and named whole, or not at all.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, OutputExistsError, ParityError
from ..layouts.hf import ARCHITECTURES
from .formats import bounded_json
from .formats.atomic import atomic_write, publish_folder, write_bytes
from .formats.temps import staging_folder
from .formats.folders import refuse_overlap
from .formats.source import blocks, open_source

CHUNK = 16 << 20

INDEX = "model_index.json"
CLIP_CLASSES = frozenset(ARCHITECTURES.values())
# a layout a pipeline's towers are written in -> the library its model_index.json names for them
LIBRARIES = {"hf": "transformers", "paddlenlp": "paddlenlp.transformers"}


def is_pipeline(path) -> bool:
    """Whether `path` is a pipeline folder: a folder with a model_index.json."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode) and os.path.lexists(Path(path) / INDEX)
    except (OSError, ValueError):  # no such folder, a name too long, a NUL: the reader says which
        return False


def read_index(path) -> dict:
    """A pipeline's model_index.json, through the one bounded JSON reader."""
    return bounded_json.read(Path(path) / INDEX, bounded_json.CONFIG)


def components(index: dict, path) -> dict[str, tuple[str | None, str | None]]:
    """A pipeline's components as its model_index.json (`index`, read from `path`) lists them: subfolder ->
    (library, class); keys starting with "_" (`_class_name`, `_diffusers_version`) are the pipeline's own."""
    out = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            raise CheckpointError(f"{INDEX}'s entry {name!r} is {value!r}, not [library, class]", path=path)
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"{INDEX} names a component {name!r}, which is not a subfolder name", path=path)
        out[name] = (value[0], value[1])
    return out


def clip_parts(parts: dict) -> list[str]:
    """The subfolders that hold a CLIP tower, by the class `components` says of each."""
    return [name for name, (_, cls) in parts.items() if cls in CLIP_CLASSES]


def describe(path, config=None) -> dict:
    """What `parity info` prints of a pipeline: its class, each CLIP subfolder's description (as for a
    checkpoint folder), and the other components."""
    from .checkpoint import describe as describe_checkpoint

    index = read_index(path)
    parts = components(index, path)
    towers = {name: describe_checkpoint(Path(path) / name, config) for name in clip_parts(parts)}
    return {"pipeline": str(path), "class": index.get("_class_name"),
            "clip": {name: {"class": parts[name][1], "layout": d["layout"], "model": d["model"],
                            "config": d["config"], "config from": d["config from"], "parameters": d["parameters"],
                            "sha256": d["sha256"]} for name, d in towers.items()},
            "other": {name: f"{lib}.{cls}" if lib else str(cls) for name, (lib, cls) in parts.items() if name not in towers}}


@dataclass
class PipelineConverted:
    path: Path
    converted: dict = field(default_factory=dict)  # subfolder -> Converted
    skipped: list[str] = field(default_factory=list)  # components and files left out
    copied: list[str] = field(default_factory=list)  # components and files copied as they are

    def summary(self) -> list[str]:
        """What was left as it was, a line each for the copied and the skipped (each conversion says its own)."""
        lines = []
        if self.copied:
            lines.append(f"copied as they are: {', '.join(self.copied)}")
        if self.skipped:
            lines.append(f"skipped (not CLIP; --copy-rest copies them): {', '.join(self.skipped)}")
        return lines


def convert_pipeline(src, to: str, out, *, copy_rest: bool = False, force: bool = False, dtype: str | None = None,
                     strict: bool = False, stage: Callable[[str], None] | None = None) -> PipelineConverted:
    """Convert every CLIP tower of the pipeline folder `src` to layout `to` (hf or paddlenlp), under the
    same subfolder names in the new folder `out`; the other components are skipped, or with `copy_rest`
    copied byte for byte (model_index.json then names the target's library for the converted towers).

    >>> parity.convert_pipeline("stable-diffusion-xl-base-1.0", "paddlenlp", "sdxl-paddle")  # doctest: +SKIP
    """
    from .convert import convert

    src, out = Path(src), Path(out)
    if to not in LIBRARIES:
        raise ParityError(f"a pipeline's towers are written as {' or '.join(LIBRARIES)} folders, not {to}")
    index = read_index(src)  # read once: what is converted and the index written are of one reading
    parts = components(index, src)
    towers = clip_parts(parts)
    if not towers:
        raise CheckpointError(f"{INDEX} names no CLIP tower ({', '.join(sorted(CLIP_CLASSES))})", path=src)
    refuse_overlap(out, src)
    if os.path.lexists(out) and not force:
        raise OutputExistsError(f"{out} already exists")
    if not out.parent.is_dir():
        raise CheckpointError("no such folder to write the pipeline in", path=out.parent)
    result = PipelineConverted(out)
    with staging_folder(out.parent) as staging:
        for name in towers:
            if stage:
                stage(f"converting {name}/")
            result.converted[name] = convert(src / name, to, staging / name, dtype=dtype, strict=strict)
        rest = sorted(set(os.listdir(src)) - set(towers) - {INDEX})
        if copy_rest:
            for name in rest:
                _copy_entry(src / name, staging / name)
            index.update({name: [LIBRARIES[to], parts[name][1]] for name in towers})
            write_bytes(staging / INDEX, json.dumps(index, indent=2).encode(), force=False)
            result.copied = [*rest, INDEX]
        else:
            result.skipped = [*rest, INDEX]
        publish_folder(staging, out, force)
        for name, converted in result.converted.items():  # written in the staging folder, now named
            converted.saved.path = out / name
    return result


def _copy_entry(src: Path, dst: Path) -> None:
    """A file or folder copied byte for byte; a link, FIFO or device is refused (never followed)."""
    info = os.lstat(src)
    if stat.S_ISDIR(info.st_mode):
        os.mkdir(dst, 0o700)
        for name in sorted(os.listdir(src)):
            _copy_entry(src / name, dst / name)
        os.chmod(dst, 0o755)
    elif stat.S_ISREG(info.st_mode):
        with open_source(src) as source:  # read through one descriptor, bounded by the file's own size
            def write(f):
                for part in blocks(source, 0, source.size, bytearray(CHUNK)):
                    f.write(part)
            atomic_write(dst, write, force=False)
    else:
        raise CheckpointError("not a regular file or folder: a pipeline's other files are copied, never followed",
                              path=src)
