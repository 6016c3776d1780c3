"""What a file holds, as a flat state dict: the wrappers around it unwrapped (`{'state_dict': ...}`), the
prefixes its saver added stripped (`module.`), parity's record found, and each tensor an array or a
`Stored` one, never anything else."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import CheckpointError
from .formats import Stored, bounded_json
from .formats.pdparams import EXTRAS_KEY
from .tensors import Planned

PADDLE_NAME_TABLE = "StructuredToParameterName@@"  # paddle.save's own entry: structured name -> variable name
WRAPPERS = ("state_dict", "model")  # {'state_dict': ...} (Chinese-CLIP, PASSL), {'model': ...}
PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, wrapper modules, torch.compile


def read_array(a) -> np.ndarray:
    """An array, a Stored tensor read, a Planned tensor made."""
    if isinstance(a, Stored):
        return a.read()
    return a() if isinstance(a, Planned) else a


def as_array(value) -> np.ndarray | Stored | None:
    if isinstance(value, Stored):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    # paddle.save stores a tensor inside a nested container as (variable name, array)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray):
        return value[1]
    return None


def unwrap(content, path) -> tuple[dict, list[str]]:
    """The state dict inside the wrappers (parity's record found beside a wrapper is kept with it)."""
    unwrapped: list[str] = []
    record = None
    while isinstance(content, Mapping) and not all(as_array(v) is not None or k in (EXTRAS_KEY, PADDLE_NAME_TABLE)
                                                   for k, v in content.items()):
        wrapper = next((w for w in WRAPPERS if isinstance(content.get(w), Mapping)), None)
        if wrapper is None:
            break
        record = content.get(EXTRAS_KEY, record)
        beside = sorted(str(k) for k in content if k not in (wrapper, EXTRAS_KEY))
        unwrapped.append(f"wrapper {wrapper!r}" + (f" (not read beside it: {', '.join(beside)})" if beside else ""))
        content = content[wrapper]
    if not isinstance(content, Mapping):
        raise CheckpointError(f"holds a {type(content).__name__}, not a state dict", path=path)
    content = dict(content)
    if record is not None and EXTRAS_KEY not in content:
        content[EXTRAS_KEY] = record
    return content, unwrapped


def tensors_of(content: dict, path, notes: list[str]) -> tuple[dict, dict | None]:
    tensors, record = {}, None
    for key, value in content.items():
        if key == PADDLE_NAME_TABLE:  # Paddle's own bookkeeping, no tensor: dropped on purpose
            notes.append(f"dropped Paddle's {PADDLE_NAME_TABLE} name table")
        elif key == EXTRAS_KEY:
            record = parse_record(value, path)
        elif not isinstance(key, str):
            raise CheckpointError(f"key {key!r} is not a string", path=path)
        elif as_array(value) is None:
            raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor; parity "
                                  f"unwraps {' and '.join(map(repr, WRAPPERS))} only: extract the state dict first", path=path)
        else:
            tensors[key] = as_array(value)
    return tensors, record


def parse_record(value, path) -> dict:
    """parity's record (a JSON object in a string), through the bounded JSON reader, or CheckpointError."""
    if not isinstance(value, (str, bytes)):
        raise CheckpointError(f"parity's record ({EXTRAS_KEY}) is a {type(value).__name__}, not JSON text", path=path)
    return bounded_json.loads(value, bounded_json.RECORD, path)


def strip_prefixes(tensors: dict, unwrapped: list[str]) -> dict:
    stripped = True
    while stripped and tensors:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                unwrapped.append(f"prefix {prefix!r}")
                stripped = True
    return tensors
