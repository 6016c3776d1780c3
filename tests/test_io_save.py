"""Conversion one tensor at a time: the files parity writes itself (no torch, no safetensors library) are
read by those libraries, tensors read when used are still checked (CRC-32), and the check of what was
written still catches a wrong byte."""
import shutil
import zipfile

import numpy as np
import pytest
import torch

from helpers import listing, refused, run
import parity
from parity.io import checkpoint, formats
from parity.io.formats.pdparams import EXTRAS_KEY
from parity.io.save import same_bits
import parity.io.formats.safetensors  # noqa: F401  (formats.safetensors, as the tests name it)
import parity.io.formats.torch_zip  # noqa: F401
from parity.io.convert import convert
from parity.testing.synthetic import release_archive


@pytest.fixture(scope="module")
def rn50_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    source = release_archive("RN50")
    for to, name in (("paddle", "a.pdparams"), ("torch", "a.pt"), ("safetensors", "a.safetensors")):
        convert(source, to, folder / name)
    return folder


def test_torch_file_written_without_torch_loads_in_torch(rn50_files):
    want = parity.load(release_archive("RN50")).state_dict  # the archive's tensors, in its order
    for mmap in (False, True):  # mmap=True needs every tensor's bytes aligned, as torch.save aligns them
        got = torch.load(rn50_files / "a.pt", weights_only=True, mmap=mmap)
        assert list(got) == list(want)
        for k, v in want.items():
            assert same_bits(got[k].numpy(), v), k
    with zipfile.ZipFile(rn50_files / "a.pt") as archive:
        assert archive.testzip() is None  # every entry's CRC-32 is right
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())


def test_safetensors_written_by_parity_loads_in_the_library(rn50_files):
    from safetensors.numpy import load_file
    from safetensors import safe_open

    got = load_file(str(rn50_files / "a.safetensors"))
    want = parity.load(release_archive("RN50")).state_dict
    assert set(got) == set(want)
    for k, v in want.items():
        assert same_bits(got[k], v), k
    with safe_open(str(rn50_files / "a.safetensors"), "np") as f:
        assert f.metadata()["parity.model"] == "RN50"


def test_pdparams_written_one_tensor_at_a_time_is_a_plain_pickle(rn50_files):
    import pickle

    plain = pickle.loads((rn50_files / "a.pdparams").read_bytes())  # what paddle.load does underneath
    ours = parity.load(rn50_files / "a.pdparams")
    assert set(plain) == set(ours.state_dict) | {EXTRAS_KEY}
    for k, v in ours.state_dict.items():
        assert np.array_equal(plain[k], v) and plain[k].dtype == v.dtype and plain[k].strides == v.strides, k
    # Linear weights stay Fortran-ordered (no transposing copy), as numpy itself pickles them
    assert plain["transformer.resblocks.0.mlp.c_fc.weight"].flags.f_contiguous


def test_archive_is_crc_checked(tmp_path):
    """A release archive's tensors are read when they are used, not through zipfile: a flipped byte in a
    tensor is still caught (by the CRC-32 of its entry, checked on its first read), and nothing is written."""
    bad = tmp_path / "RN50.pt"
    shutil.copy(release_archive("RN50"), bad)
    with zipfile.ZipFile(bad) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    raw = bytearray(bad.read_bytes())
    name_length, extra_length = np.frombuffer(bytes(raw[info.header_offset + 26:info.header_offset + 30]), "<u2")
    raw[info.header_offset + 30 + int(name_length) + int(extra_length) + 1000] ^= 0x10
    bad.write_bytes(bytes(raw))
    for to in ("paddle", "torch", "safetensors"):
        refused(run("convert", bad, "--to", to, "-o", tmp_path / f"out.{to}"), "fails its CRC-32 check")
    assert listing(tmp_path) == ["RN50.pt"]
    refused(run("info", bad), "fails its CRC-32 check")  # on info's hash pass
    with pytest.raises(parity.CheckpointError, match="CRC"):  # and where the tensors are loaded
        parity.load(bad)


def test_tensors_read_when_used_are_the_loaded_ones():
    """What convert reads one tensor at a time is what load reads whole, also with tensors held at once."""
    loaded = parity.load(release_archive("RN50")).state_dict
    with formats.open_source(release_archive("RN50")) as source:
        lazy = checkpoint.from_raw(formats.read(source), release_archive("RN50")).state_dict
        assert list(lazy) == list(loaded)
        assert all(isinstance(v, formats.Stored) for v in lazy.values())
        held = {}
        for k, v in lazy.items():  # one buffer is reused only while nothing made from it is alive
            held[k] = v.read()
            assert same_bits(held[k], loaded[k]), k
        for k in loaded:
            assert same_bits(held[k], loaded[k]), k


@pytest.mark.parametrize("to", ["torch", "safetensors", "paddle"])
def test_a_wrong_byte_in_a_streamed_file_is_caught(tmp_path, monkeypatch, to):
    """The check re-reads the file tensor by tensor against the digests of what was made: one flipped bit
    fails it (in a .pdparams, a bit of a buffer that the check hashes where it lies)."""
    module = {"torch": formats.torch_zip, "safetensors": formats.safetensors, "paddle": formats.pdparams}[to]
    real = module.write

    def corrupting(f, tensors, *rest):
        real(f, tensors, *rest)
        middle = f.seek(0, 2) // 2  # in some tensor's bytes: headers and directories are a tiny part
        f.seek(middle)
        byte = f.read(1)[0]
        f.seek(middle)
        f.write(bytes([byte ^ 1]))

    monkeypatch.setattr(module, "write", corrupting)
    out = tmp_path / f"x.{to}"
    refused(run("convert", release_archive("RN50"), "--to", to, "-o", out), "does not read back as written")
    assert list(tmp_path.iterdir()) == []


def test_a_pdparams_read_unread_places_each_array_as_its_bytes_lie(tmp_path):
    """The check's reader leaves each array unread (`Placed`); the hash of the bytes where it says they lie,
    with its dtype, shape and memory order, is the digest of the array that the full reader gives: in C
    and Fortran order, for a vector (both orders at once), a (1, n) Fortran array, an empty one, a scalar."""
    from parity.io.formats import pdparams
    from parity.io.formats.source import FileSource, hash_range
    from parity.io.tensors import Digest, digest

    rng = np.random.default_rng(1)
    arrays = {"c": rng.standard_normal((40, 3000)).astype(np.float32), "f": np.asfortranarray(rng.standard_normal((300, 7))),
              "row": np.asfortranarray(np.ones((1, 9), np.float16)), "v": np.arange(5), "e": np.zeros((0, 3), np.float32),
              "s": np.array(2.5, np.float64)}
    path = tmp_path / "x.pdparams"
    with open(path, "wb") as f:
        pdparams.write(f, arrays, None)
    with FileSource(path) as source:
        full, placed = formats.read(source).content, formats.read(source, unread=True).content
        block = bytearray(1 << 12)  # smaller than "c": a range is hashed block by block
        for k, a in arrays.items():
            p = placed[k]
            assert isinstance(p, pdparams.Placed) and same_bits(full[k], a), k
            assert Digest(p.dtype.str, p.shape, p.fortran, hash_range(source, p.offset, p.nbytes, block)) == digest(full[k]), k
    assert placed["f"].fortran and not placed["row"].fortran and not placed["c"].fortran


def test_loaded_pdparams_arrays_are_writable(rn50_files):
    """Tensors that were read-only views of the mapped source still load as writable arrays."""
    import pickle

    plain = pickle.loads((rn50_files / "a.pdparams").read_bytes())
    assert all(v.flags.writeable for k, v in plain.items() if k != EXTRAS_KEY)


def _plan():
    """A plan of tensors as a conversion makes them: float16 cast to float32 (Fortran-ordered, as a Paddle
    layout's transposed Linear weights are), kept as they are, of several sizes and dtypes."""
    from parity.io.tensors import Planned

    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((64, 48)).astype(np.float16).T, "b": rng.integers(0, 9, (7,)),
              "c": rng.standard_normal((300, 5)).astype(np.float16), "d": np.float32(rng.standard_normal((3, 3))),
              "e": np.zeros((0, 4), np.float16), "f": rng.standard_normal(()).astype(np.float16)}
    wanted = {"a": np.float32, "c": np.float32, "e": np.float32, "f": np.float32}
    return {k: Planned(lambda v=v: v, np.dtype(wanted.get(k, v.dtype)), v.shape) for k, v in arrays.items()}


def test_tensors_made_ahead_are_written_as_tensors_made_in_turn():
    """A Target made one tensor ahead on a second thread (two reused buffers) writes the same bytes, with
    the same digests, as one made a tensor at a time: in the order the writer asks, and out of it (each
    tensor then made in turn, what was made ahead dropped)."""
    import io

    from parity.io.formats import pdparams
    from parity.io.save import Target
    from parity.io.tensors import digest

    def written(streaming, order=None):
        target, out = Target(_plan(), fortran=True), io.BytesIO()
        if streaming:
            with target.streaming(order):
                pdparams.write(out, target, None)
        else:
            pdparams.write(out, target, None)
        return out.getvalue(), target.digests

    alone, digests = written(False)
    assert {k: digests[k] for k in "ac"} == {k: digest(np.asarray(p(), order="K")) for k, p in _plan().items() if k in "ac"}
    assert written(True) == (alone, digests)
    assert written(True, list("fedcba")) == (alone, digests)  # every tensor asked for out of the order given
    assert written(True, list("abdcef")) == (alone, digests)  # some of them

