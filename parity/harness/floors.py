"""The float64 outputs behind the noise floor, kept on disk: a later run on the same weights, inputs and
code reads them in place of the float64 pass (on a CPU, the slowest pass of verifying a big model after
the photographs).

What is kept is keyed by everything it depends on: every hub tensor's name, dtype, shape and bytes
(XXH3-128), the config, the canonical inputs, the towers, torch's version, the device, and the bytes of
parity's own modules that compute it (the torch models, their towers and the float64 switch). A file
that does not read as such a file is ignored and the pass runs again. Weights still in a file (plans,
made as each tower is built) are not hashed: that would read the file twice, so their pass always runs.
"""
from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Mapping

import numpy as np
import xxhash

from ..errors import CheckpointError
from ..io.formats import contiguous, open_source, safetensors
from ..io.formats.atomic import atomic_write
from ..io.formats.source import Stored
from ..io.tensors import Planned, as_numpy
from .gate import OUTPUTS, Outputs
from .weights import cache_dir

VERSION = 1  # of what is kept: a change of its form starts a new set of files


def folder() -> Path:
    return cache_dir().parent / "float64"


@cache
def _code() -> bytes:
    """The bytes of the modules whose arithmetic the float64 outputs are: any change to them is a new key."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.glob("models/torch_*.py"), *root.glob("towers/*.py"), root / "harness" / "gate.py",
                    root / "harness" / "run.py"])
    return b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in files)


def key(state_dict: Mapping, config, image: np.ndarray, text: np.ndarray, towers, device: str) -> str | None:
    """The key of these float64 outputs; None where the weights are not all in memory (or not numpy-able)."""
    import torch

    digest = xxhash.xxh3_128()
    for name in sorted(state_dict):
        value = state_dict[name]
        if isinstance(value, (Planned, Stored)):
            return None
        try:
            a = contiguous(as_numpy(value))
        except (TypeError, RuntimeError):  # bfloat16 in torch has no numpy view
            return None
        digest.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        digest.update(a.reshape(-1).view(np.uint8))
    context = {"version": VERSION, "config": config.to_dict(), "towers": list(towers), "torch": torch.__version__,
               "device": device}
    digest.update(json.dumps(context, sort_keys=True).encode())
    for x in (image, text):
        digest.update(f"{x.dtype.str}{x.shape}".encode())
        digest.update(contiguous(x).reshape(-1).view(np.uint8))
    digest.update(_code())
    return digest.hexdigest()


def load(name: str | None) -> Outputs | None:
    """The float64 outputs kept under `name`, or None (none kept, or a file that does not read as one)."""
    if name is None or not (path := folder() / f"{name}.safetensors").is_file():
        return None
    try:
        with open_source(path) as source:
            raw = safetensors.read(source)
            arrays = {k: v.read() if isinstance(v, Stored) else v for k, v in raw.content.items()}
    except (CheckpointError, OSError):
        return None
    if raw.metadata.get("parity.float64") != name or any(a.dtype != np.float64 for a in arrays.values()):
        return None
    return Outputs(*(arrays.get(n) for n in OUTPUTS), {k.removeprefix("states."): v for k, v in arrays.items()
                                                       if k.startswith("states.")})


def store(name: str | None, outputs: Outputs) -> None:
    """Keep `outputs` under `name` (atomically; a folder that cannot be written keeps nothing)."""
    if name is None:
        return
    arrays = {n: outputs[n] for n in OUTPUTS if outputs[n] is not None}
    arrays.update({f"states.{k}": v for k, v in outputs.states.items()})
    arrays = {k: np.array(v, np.float64, order="C") for k, v in arrays.items()}
    try:
        os.makedirs(folder(), exist_ok=True)
        atomic_write(folder() / f"{name}.safetensors",
                     lambda f: safetensors.write(f, arrays, {"parity.float64": name}), force=True)
    except (CheckpointError, OSError):
        pass

