"""Small hostile checkpoints, made from bytes: the red-team cases of the hardening issue, one function each.

The regression tests (test_red_team.py) run parity on them, and the fuzzer (fuzz/) starts from them. Every
file is small (a few MB at most) even where it claims gigabytes.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib


from parity.config.schema import Config, TextConfig, VisionConfig

ESCAPES = "\x1b]0;OWNED\x07\x1b[2J"  # retitles and clears a terminal that prints it raw


def tiny_config(vocab: int = 49408) -> Config:
    """A computable CLIP of a few MB (a ViT: no BatchNorm calibration)."""
    return Config(32, VisionConfig("vit", 1, 64, 32, 16, 256, 2, "quick_gelu", 1e-5),
                  TextConfig(64, 1, 256, 77, vocab, 2, "quick_gelu", 1e-5))


def tiny_state(vocab: int = 49408, seed: int = 0) -> dict:
    """Its official-layout state dict as torch tensors, in the release's dtype mix."""
    from parity.testing.synthetic import make_state_dict

    return make_state_dict(tiny_config(vocab), seed)


def torch_bytes(obj) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _entries(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of (name, data, compression) entries in this order, duplicates and all."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z, _quiet():
        for name, data, method in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=method)
    return buffer.getvalue()


class _quiet:  # zipfile warns about a duplicate name, which is the point here
    def __enter__(self):
        import warnings
        self.catch = warnings.catch_warnings()
        self.catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.catch.__exit__(*exc)


def storage_of(data: bytes, key: str) -> str:
    """The zip entry name of the storage that holds tensor `key` in a torch.save file."""
    names = _entries(data)
    pkl = next(d for i, d in names if i.filename.endswith("data.pkl"))
    prefix = next(i.filename for i, _ in names if i.filename.endswith("data.pkl"))[: -len("data.pkl")]

    class Finder(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return lambda storage, *rest: storage
            return (lambda *a, **k: a[0] if a else None) if module.startswith("torch") else super().find_class(module, name)

        def persistent_load(self, pid):
            return pid[2]

    return f"{prefix}data/{Finder(io.BytesIO(pkl)).load()[key]}"


def duplicate_entry(data: bytes, key: str) -> bytes:
    """Case 1: the storage of `key` twice under one name, the second copy all zeros (torch reads the first)."""
    target = storage_of(data, key)
    entries = [(i.filename, d, zipfile.ZIP_STORED) for i, d in _entries(data)]
    original = next(d for n, d, _ in entries if n == target)
    return _zip(entries + [(target, bytes(len(original)), zipfile.ZIP_STORED)])


def longer_entry(data: bytes, key: str) -> bytes:
    """Case 2: the storage of `key` zeroed and one byte longer than its tensor, its CRC-32 left as it was:
    a reader that stops at the tensor's length never reaches the end where zipfile checks the CRC."""
    target = storage_of(data, key)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info, d in _entries(data):
            if info.filename == target:
                crc = zlib.crc32(d)
                d = bytes(len(d) + 1)
                info = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w") as w:
                    w.write(d)
                continue
            z.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), d)
    raw = bytearray(out.getvalue())
    # put the old CRC back, in the local header and in the central directory
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo(target)
    new = struct.pack("<I", info.CRC)
    old = struct.pack("<I", crc)
    start = 0
    while (at := raw.find(new, start)) >= 0:
        raw[at:at + 4] = old
        start = at + 4
    return bytes(raw)


def deep_pickle(depth: int = 300_000) -> bytes:
    """Case 4: a dict whose key is a tuple nested `depth` deep (plain pickle.loads dies on it)."""
    return b"\x80\x02})" + b"\x85" * depth + b"Ns."


def deep_pt(depth: int = 300_000) -> bytes:
    """Case 4, inside a torch zip: the same pickle as data.pkl."""
    return _zip([("archive/data.pkl", deep_pickle(depth), zipfile.ZIP_STORED),
                 ("archive/version", b"3\n", zipfile.ZIP_STORED)])


def _torch_pickle(storage_key: str, numel: int, size: tuple, stride: tuple, dtype: str = "FloatStorage") -> bytes:
    """data.pkl of {'w': one tensor} over one storage, as torch writes it (protocol 2)."""
    from parity.io.formats.torch_zip import _global, _int, _ints, _text

    storage = (pickle.MARK + _text("storage") + _global("torch", dtype) + _text(storage_key) + _text("cpu")
               + _int(numel) + pickle.TUPLE + pickle.BINPERSID)
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return (pickle.PROTO + b"\x02" + hooks + _text("w") + _global("torch._utils", "_rebuild_tensor_v2")
            + pickle.MARK + storage + _int(0) + _ints(size) + _ints(stride) + pickle.NEWFALSE + hooks
            + pickle.TUPLE + pickle.REDUCE + pickle.SETITEM + pickle.STOP)


def stride_zero(numel: int = 1 << 28) -> bytes:
    """Case 5: one float32 element claimed as `numel` (stride 0): 632 bytes that claim a gigabyte."""
    return _zip([("archive/data.pkl", _torch_pickle("0", 1, (numel,), (0,)), zipfile.ZIP_STORED),
                 ("archive/byteorder", b"little", zipfile.ZIP_STORED),
                 ("archive/data/0", b"\0\0\0\0", zipfile.ZIP_STORED),
                 ("archive/version", b"3\n", zipfile.ZIP_STORED)])


def _zeros_deflated(n: int) -> tuple[bytes, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 24)
    parts = [compressor.compress(block) for _ in range(n // len(block))]
    return b"".join(parts) + compressor.flush(), zlib.crc32(bytes(0))


def inflating(which: str = "storage", n: int = 1 << 29) -> bytes:
    """Case 5: a zip of about 0.5 MB whose deflated storage (or `byteorder` entry) inflates to `n` bytes."""
    compressed, _ = _zeros_deflated(n)
    crc = 0
    block = bytes(1 << 24)
    for _ in range(n // len(block)):
        crc = zlib.crc32(block, crc)
    numel = n // 4 if which == "storage" else 4
    entries = [("archive/data.pkl", _torch_pickle("0", numel, (numel,), (1,)), None),
               ("archive/byteorder", compressed if which == "byteorder" else b"little", which == "byteorder"),
               ("archive/data/0", compressed if which == "storage" else bytes(16), which == "storage"),
               ("archive/version", b"3\n", None)]
    return _raw_zip([(name, data, crc if deflated else zlib.crc32(data), n if deflated else len(data), bool(deflated))
                     for name, data, deflated in entries])


def _raw_zip(entries: list[tuple[str, bytes, int, int, bool]]) -> bytes:
    """A zip written by hand: (name, bytes as stored, CRC-32, inflated size, deflated?) per entry."""
    out, directory = bytearray(), bytearray()
    for name, data, crc, size, deflated in entries:
        offset = len(out)
        method = 8 if deflated else 0
        encoded = name.encode()
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc, len(data), size, len(encoded), 0)
        out += encoded + data
        directory += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 33, crc, len(data), size,
                                 len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(out), 0)
    return bytes(out + directory + end)


def aliased_safetensors(count: int = 128, nbytes: int = 8 << 20) -> bytes:
    """Case 5: `count` tensors whose data_offsets all name the same `nbytes`."""
    header = {f"t{i}": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]} for i in range(count)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(nbytes)


def infinite_shape() -> bytes:
    """Case 7: a safetensors shape of 1e999 (JSON's infinity)."""
    text = b'{"w":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}'
    return struct.pack("<Q", len(text)) + text + bytes(4)


def escape_key(data: bytes) -> bytes:
    """Case 8: a torch.save file whose data.pkl names a storage with terminal escape sequences in it."""
    entries = [(i.filename, d, zipfile.ZIP_STORED) for i, d in _entries(data)]
    pkl_name = next(n for n, _, _ in entries if n.endswith("data.pkl"))
    pkl = next(d for n, d, _ in entries if n == pkl_name)
    # the first storage key in the pickle, a BINUNICODE "0", becomes the escape string: no such entry
    old = b"X\x01\x00\x00\x000"
    new = b"X" + struct.pack("<I", len(ESCAPES.encode())) + ESCAPES.encode()
    assert old in pkl
    entries = [(n, pkl.replace(old, new, 1) if n == pkl_name else d, m) for n, d, m in entries]
    return _zip(entries)


def two_data_pkl(data: bytes) -> bytes:
    """Case 9: a torch.save file with its data.pkl entry twice."""
    entries = [(i.filename, d, zipfile.ZIP_STORED) for i, d in _entries(data)]
    pkl = next(e for e in entries if e[0].endswith("data.pkl"))
    return _zip(entries + [pkl])


def deep_list_pickle(depth: int = 200) -> bytes:
    """Lists nested `depth` deep, each appended to its parent after the parent was stored: the nesting
    grows after the fact, where a pass over the opcodes alone cannot see it."""
    put, get = (lambda i: b"r" + struct.pack("<I", i)), (lambda i: b"j" + struct.pack("<I", i))
    out = bytearray(b"\x80\x02]" + put(0))  # the outermost list stays on the stack
    for i in range(1, depth):
        out += b"]" + put(i) + b"0"  # a new list, stored, dropped from the stack
        out += get(i - 1) + get(i) + b"a0"  # parent.append(new), the parent dropped again
    return bytes(out + b".")


ALL = {  # name -> (maker of bytes, what it is): the fuzzer's hostile seeds
    "deep.pdparams": lambda: deep_pickle(),
    "deep.pt": lambda: deep_pt(),
    "stride0.pt": lambda: stride_zero(),
    "aliased.safetensors": lambda: aliased_safetensors(8, 1 << 16),
    "inf-shape.safetensors": infinite_shape,
    "deep-list.pdparams": lambda: deep_list_pickle(),
}
