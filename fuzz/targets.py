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

TARGETS = ("torch_zip", "torchscript", "pdparams", "safetensors", "folder_json", "json", "record")
ROOT = Path(__file__).resolve().parent.parent


def _modules():
    from parity.io import checkpoint, formats
    from parity.errors import ParityError
    return checkpoint, formats, ParityError


def _walk(content, out: list):
    from parity.io.formats import Stored
    if isinstance(content, dict):
        for v in content.values():
            _walk(v, out)
    elif isinstance(content, (list, tuple)):
        for v in content:
            _walk(v, out)
    elif isinstance(content, (Stored, np.ndarray)):
        out.append(content)


def _folder_json(data: bytes) -> None:
    """A folder's JSON files (config.json, open_clip_config.json, a sharded index), as the folder reader
    takes them."""
    from parity.io.formats.folders import weight_map
    from parity.layouts import hf, open_clip, paddlenlp
    from parity.errors import ParityError

    from parity.io.formats import bounded_json

    try:
        value = bounded_json.loads(data, bounded_json.CONFIG, "<config>")
    except ParityError:
        return
    for step in (lambda: hf.config_from_json(value), lambda: paddlenlp.config_from_json(value),
                 lambda: open_clip.config_from_json(value), lambda: weight_map(value, "<index>")):
        try:
            step()
        except ParityError:
            pass


def _shape(value) -> tuple[int, int]:
    """(values, depth) of a parsed JSON value, counted as the reader's bounds count them: every value, and
    the nesting of objects and arrays."""
    count, deepest, stack = 0, 0, [(value, 0)]
    while stack:
        item, outer = stack.pop()  # outer: how many containers hold it
        count += 1
        if isinstance(item, (dict, list)):
            deepest = max(deepest, outer + 1)
            stack.extend((c, outer + 1) for c in (item.values() if isinstance(item, dict) else item))
    return count, deepest


def _json(data: bytes) -> None:
    """The one JSON reader, under every kind's bounds: what it returns must lie within them (values and
    depth counted again on the parsed result), and it refuses with a ParityError only."""
    from parity.errors import ParityError
    from parity.io.formats import bounded_json

    for kind in (bounded_json.CONFIG, bounded_json.RECORD, bounded_json.INDEX, bounded_json.MANIFEST,
                 bounded_json.SAFETENSORS_HEADER):
        try:
            value = bounded_json.loads(data, kind, "<json>")
        except ParityError:
            continue
        values, depth = _shape(value)
        if values > kind.max_values or depth > kind.max_depth or len(data) > kind.max_bytes:
            raise AssertionError(f"{kind.what}: {values} values {depth} deep from {len(data)} bytes passed its bounds")
    _config_file(data)


def _config_file(data: bytes) -> None:
    """What `--config FILE.json` does with a file's bytes once read: parity's own form, or open_clip's."""
    from parity.config.schema import Config
    from parity.errors import ParityError
    from parity.io.formats import bounded_json
    from parity.layouts import open_clip

    try:
        value = bounded_json.loads(data, bounded_json.CONFIG, "<config>")
        if "vision_cfg" in value or "model_cfg" in value:
            open_clip.config_from_model_cfg(value.get("model_cfg", value))
        else:
            Config.from_dict(value.get("config", value))
    except ParityError:
        return


def _record(data: bytes) -> None:
    """parity's record as a checkpoint carries it (a string in a pickle, safetensors metadata, a zip
    entry or parity.json): parsed, its dtypes and buffers built, checked against a CLIP's keys and shapes,
    and its config read."""
    from parity.io import checkpoint
    from parity import layouts
    from parity.config import registry
    from parity.errors import ParityError

    config = registry.get("RN50").config
    try:
        record = checkpoint.parse_record(data.decode("utf-8", "surrogateescape"), "<record>")
        checkpoint._record(record, config, layouts.get("paddle"), "<record>")
        checkpoint._metadata_config(record, {}, layouts.get("paddle"), "<record>")
    except ParityError:
        return


def replay(target: str, data: bytes) -> None:
    """One input through `target`: returns, or raises ParityError; anything else is a bug in parity."""
    if target == "folder_json":
        return _folder_json(data)
    if target == "json":
        return _json(data)
    if target == "record":
        return _record(data)
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


# ---------------------------------------------------------------- structure-aware mutation
# Byte-level mutation of a zip breaks a CRC-32 or an offset almost every time, and the input then stops
# at the archive checks; these mutators also mutate what lies inside (an entry's bytes, a safetensors
# header) and make the container valid around it again, so the fuzzer reaches the unpickler, the tensor
# checks and the layout code behind them. A quarter of the mutations stay plain byte mutations.
def _zip_entries(data: bytes) -> list[tuple[str, bytes]] | None:
    import io
    import zipfile
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(i.filename, z.read(i)) for i in z.infolist()]
    except Exception:  # noqa: BLE001  (a mutant that is no zip: mutated as bytes)
        return None


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    import io
    import warnings
    import zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for name, body in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()


def mutate_zip(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    import random
    rng = random.Random(seed)
    entries = _zip_entries(data) if rng.random() < 0.75 else None
    if not entries:
        return atheris.Mutate(data, max_size)
    pick = rng.random()
    pkls = [i for i, (n, _) in enumerate(entries) if n.endswith("data.pkl")]
    i = pkls[0] if pkls and pick < 0.6 else rng.randrange(len(entries))
    name, body = entries[i]
    if pick < 0.85:  # the entry's bytes
        entries[i] = (name, atheris.Mutate(body, max(len(body) * 2, 64)))
    elif pick < 0.9:
        entries.append(entries[i])  # a second entry of the same name
    elif pick < 0.95:
        del entries[i]
    else:
        entries[i] = (atheris.Mutate(name.encode(), 64).decode("utf-8", "replace"), body)
    return _zip(entries)[:max_size]


def mutate_safetensors(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    import random
    import struct
    rng = random.Random(seed)
    if len(data) < 8 or rng.random() < 0.25:
        return atheris.Mutate(data, max_size)
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        return atheris.Mutate(data, max_size)
    header = atheris.Mutate(data[8:8 + n], max(2 * n, 64))
    return (struct.pack("<Q", len(header)) + header + data[8 + n:])[:max_size]


MUTATORS = {"torch_zip": mutate_zip, "torchscript": mutate_zip, "safetensors": mutate_safetensors}


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} CORPUS_DIR [libFuzzer flags]")
    target = argv[1]
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["parity", "zipfile"]):
        _modules()
        import zipfile  # noqa: F401
        import parity.io.formats.folders  # noqa: F401
        import parity.layouts  # noqa: F401

    def one_input(data: bytes) -> None:
        replay(target, data)

    mutator = MUTATORS.get(target)
    atheris.Setup([argv[0], *argv[2:]], one_input, **({"custom_mutator": mutator} if mutator else {}))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
