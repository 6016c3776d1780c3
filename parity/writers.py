"""Checkpoint writers and the atomic write: a temporary file beside the target, checked, then renamed.

Nothing is lost on failure: the temporary file is removed, an existing output is only replaced with
`force`, and the rename is the last step, so a reader never sees half a file.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import CheckpointError

EXTRAS_KEY = "parity@@extras"  # parity's reserved entry in a .pdparams, beside Paddle's own "...@@" entries


TILE = 256


def contiguous(a: np.ndarray) -> np.ndarray:
    """`a` in C order (not np.ascontiguousarray: it turns a 0-d array into shape [1])."""
    if a.flags.c_contiguous:
        return a
    if a.ndim == 2 and a.flags.f_contiguous:
        # a transposed Linear weight: copied tile by tile, as numpy's own strided copy is ~4x slower here
        out = np.empty(a.shape, a.dtype)
        for i in range(0, a.shape[0], TILE):
            for j in range(0, a.shape[1], TILE):
                out[i:i + TILE, j:j + TILE] = a[i:i + TILE, j:j + TILE]
        return out
    return a.copy(order="C")


def write_pdparams(path: Path, tensors: Mapping[str, np.ndarray], record: str | None) -> None:
    """A pickle of numpy arrays, as `paddle.save` writes a state dict; the record is a JSON string.

    Protocol 5 (Python >= 3.8, which every Paddle 2 needs) writes each array's buffer as it is, where
    paddle.save's protocol 4 copies it first: 4x faster, and `paddle.load` reads both. A Fortran-ordered
    array (a transposed Linear weight) is stored in that order, as numpy pickles it, without a copy.
    """
    content = {k: v if v.flags.f_contiguous else contiguous(v) for k, v in tensors.items()}
    if record is not None:
        content[EXTRAS_KEY] = record
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=5)


def write_torch(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """A plain torch state dict (`torch.save` of an OrderedDict of tensors), as `build_model` expects."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_numpy on a read-only array warns; nothing writes to them
        state = OrderedDict((k, torch.from_numpy(contiguous(v))) for k, v in tensors.items())
    torch.save(state, path)


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: contiguous(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None], check: Callable[[Path], None],
                 force: bool = False) -> None:
    """write(tmp) then check(tmp) on a temporary file in `path`'s folder, then rename it to `path`."""
    if path.exists() and not force:
        raise CheckpointError(f"{path} already exists; pass --force to replace it, or -o to write elsewhere")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write in {path.parent} ({e.strerror}); choose another "
                              "output with -o") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        if path.exists() and not force:  # appeared while we wrote
            raise CheckpointError(f"{path} already exists; pass --force to replace it")
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"{path}: writing failed ({e.strerror or e}); nothing was written") from None
    finally:
        if tmp.exists():
            tmp.unlink()
