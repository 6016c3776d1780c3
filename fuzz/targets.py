"""Coverage-guided fuzz targets, one per reader, for atheris (libFuzzer for Python).

    python fuzz/targets.py TARGET CORPUS_DIR [libFuzzer flags]   # e.g. -max_total_time=300 -timeout=10

Each target feeds the bytes to a reader through a `BytesSource`, reads every tensor it describes, and
builds the checkpoint from it (`from_raw`). A reader may refuse with a ParityError, nothing else: any
other exception is a failure, as are a crash, a hang over `-timeout`, RSS over `-rss_limit_mb`, and
tensors that take more memory than the bytes they came from (twice that for bfloat16, which widens).
`replay(target, data)` runs one input the same way, for the regression tests.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np  # noqa: F401  (imported before the instrumented modules, so not instrumented itself)

TARGETS = ("torch_zip", "torchscript", "pdparams", "safetensors")
ROOT = Path(__file__).resolve().parent.parent


def _modules():
    from parity import checkpoint, formats
    from parity.errors import ParityError
    return checkpoint, formats, ParityError


def _walk(content, out: list):
    from parity.formats import Stored
    if isinstance(content, dict):
        for v in content.values():
            _walk(v, out)
    elif isinstance(content, (list, tuple)):
        for v in content:
            _walk(v, out)
    elif isinstance(content, (Stored, np.ndarray)):
        out.append(content)


def replay(target: str, data: bytes) -> None:
    """One input through `target`: returns, or raises ParityError; anything else is a bug in parity."""
    checkpoint, formats, ParityError = _modules()
    source = formats.BytesSource(data, f"<{target}>")
    try:
        kind = formats.sniff(source)
    except ParityError:
        return
    if {"torch_zip": "zip", "torchscript": "zip", "pdparams": "pickle", "safetensors": "safetensors"}[target] != kind:
        return  # another reader's input: that target's business
    try:
        raw = formats.read(source)
        tensors: list = []
        _walk(raw.content, tensors)
        made = 0
        for t in tensors:
            array = t.read() if isinstance(t, formats.Stored) else t
            made += array.nbytes
            del array
        if made > 2 * len(data) + 64:
            raise AssertionError(f"tensors of {made} bytes from {len(data)} bytes of input")
        checkpoint.from_raw(raw, Path(f"<{target}>"))
    except ParityError:
        return


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} CORPUS_DIR [libFuzzer flags]")
    target = argv[1]
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["parity", "zipfile"]):
        _modules()
        import zipfile  # noqa: F401

    def one_input(data: bytes) -> None:
        replay(target, data)

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
