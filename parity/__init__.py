"""parity: matching PyTorch and PaddlePaddle CLIP, checkpoint conversion between layouts, numerical proof."""
from __future__ import annotations

import importlib

from .version import __version__

# the public API, each name imported from its module when first used: `parity convert` and `import
# parity` pay only for what they touch (the verification harness and the exporter import more)
_PUBLIC = {"load_model": "api", "logits": "api", "tokenize": "api", "verify": "api",
           "Checkpoint": "io.checkpoint", "load": "io.checkpoint",
           "Config": "config.schema", "ConfigError": "config.schema", "TextConfig": "config.schema",
           "VisionConfig": "config.schema", "convert": "io.convert", "convert_pipeline": "io.pipeline",
           "CheckpointError": "errors", "ParityError": "errors", "export": "exporter",
           "verify_export": "exporter", "preprocess": "harness.inputs", "save": "io.save"}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'parity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # once imported, found as a plain attribute
    return value


def __dir__():
    return sorted({*globals(), *_PUBLIC})
