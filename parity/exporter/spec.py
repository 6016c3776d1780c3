"""What an export folder is made of: its formats and towers, its files' names, each tower's input and
output, and ExportError, the one error for a folder that cannot be read or run."""
from __future__ import annotations

from .. import layouts
from ..errors import ExportError  # noqa: F401  (the exporter's modules take it from here)

FORMATS = ("paddle-inference", "onnx")
MANIFEST, REFERENCE, REPORT = "manifest.json", "reference.json", "report.md"
TOWERS = layouts.HUB.TOWERS
INPUT_DTYPES = {"image": "float32", "text": "int64"}


def graph_names(fmt: str, tower: str) -> list[str]:
    """The files that hold a tower's graph in the format `fmt`."""
    return [f"{tower}.json", f"{tower}.pdiparams"] if fmt == "paddle-inference" else [f"{tower}.onnx"]


def input_shape(config, tower: str) -> list:
    r = config.vision.image_size
    return [None, 3, r, r] if tower == "image" else [None, config.text.context_length]


def input_spec(config, tower: str) -> dict:
    """A tower's input, as the manifest records it."""
    return {"name": tower, "shape": input_shape(config, tower), "dtype": INPUT_DTYPES[tower]}


def output_spec(config) -> dict:
    """A tower's output (either tower's), as the manifest records it."""
    return {"name": "features", "shape": [None, config.embed_dim], "dtype": "float32"}
