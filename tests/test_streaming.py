"""Conversion one tensor at a time: the files parity writes itself (no torch, no safetensors library) are
read by those libraries, mapped sources are still checked (CRC-32), and the check of what was written
still catches a wrong byte."""
import shutil
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import parity
from parity import checkpoint, readers
from parity.checkpoint import convert
from parity.cli import main
from parity.synthetic import release_archive


def _refused(result, needle):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.output


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
            assert checkpoint.same_bits(got[k].numpy(), v), k
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
        assert checkpoint.same_bits(got[k], v), k
    with safe_open(str(rn50_files / "a.safetensors"), "np") as f:
        assert f.metadata()["parity.variant"] == "RN50"


def test_pdparams_written_one_tensor_at_a_time_is_a_plain_pickle(rn50_files):
    import pickle

    plain = pickle.loads((rn50_files / "a.pdparams").read_bytes())  # what paddle.load does underneath
    ours = parity.load(rn50_files / "a.pdparams")
    assert set(plain) == set(ours.state_dict) | {checkpoint.EXTRAS_KEY}
    for k, v in ours.state_dict.items():
        assert np.array_equal(plain[k], v) and plain[k].dtype == v.dtype and plain[k].strides == v.strides, k
    # Linear weights stay Fortran-ordered (no transposing copy), as numpy itself pickles them
    assert plain["transformer.resblocks.0.mlp.c_fc.weight"].flags.f_contiguous


def test_mapped_archive_is_crc_checked(tmp_path):
    """A release archive is memory-mapped, not read through zipfile: a flipped byte in a tensor is still
    caught (by the CRC-32 pass beside the SHA-256), and nothing is written."""
    bad = tmp_path / "RN50.pt"
    shutil.copy(release_archive("RN50"), bad)
    with zipfile.ZipFile(bad) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    raw = bytearray(bad.read_bytes())
    name_length, extra_length = np.frombuffer(bytes(raw[info.header_offset + 26:info.header_offset + 30]), "<u2")
    raw[info.header_offset + 30 + int(name_length) + int(extra_length) + 1000] ^= 0x10
    bad.write_bytes(bytes(raw))
    for to in ("paddle", "torch", "safetensors"):
        _refused(CliRunner().invoke(main, ["convert", str(bad), "--to", to, "-o", str(tmp_path / f"out.{to}")]),
                 "fails its CRC-32 check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RN50.pt"]
    _refused(CliRunner().invoke(main, ["info", str(bad)]), "fails its CRC-32 check")  # info maps it too
    # read through zipfile (parity.load), the same file fails too
    with pytest.raises(parity.CheckpointError, match="CRC"):
        parity.load(bad)


def test_mapped_reading_gives_the_same_tensors_read_only():
    plain = readers.read(release_archive("RN50"))
    mapped = readers.read(release_archive("RN50"), mapped=True)
    assert mapped.storages and not plain.storages
    a = checkpoint.from_raw(plain, release_archive("RN50")).state_dict
    b = checkpoint.from_raw(mapped, release_archive("RN50")).state_dict
    assert list(a) == list(b)
    for k in a:
        assert checkpoint.same_bits(a[k], b[k]), k
    assert not b["visual.conv1.weight"].flags.writeable  # a view of the file, which parity never writes
    mapped.release()  # drops the mapped pages; the arrays stay valid (read again from the file)
    assert checkpoint.same_bits(a["visual.conv1.weight"], b["visual.conv1.weight"])


@pytest.mark.parametrize("to", ["torch", "safetensors"])
def test_a_wrong_byte_in_a_streamed_file_is_caught(tmp_path, monkeypatch, to):
    """The check re-reads the file tensor by tensor against the plan made again: one flipped bit fails it."""
    writer = {"torch": "write_torch", "safetensors": "write_safetensors"}[to]
    real = getattr(checkpoint, writer)

    def corrupting(path, tensors, *rest):
        real(path, tensors, *rest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1  # in some tensor's bytes: headers and directories are a tiny part
        path.write_bytes(bytes(data))

    monkeypatch.setattr(checkpoint, writer, corrupting)
    out = tmp_path / f"x.{to}"
    result = CliRunner().invoke(main, ["convert", str(release_archive("RN50")), "--to", to, "-o", str(out)])
    _refused(result, "does not read back as written")
    assert list(tmp_path.iterdir()) == []


def test_loaded_pdparams_arrays_are_writable(rn50_files):
    """Tensors that were read-only views of the mapped source still load as writable arrays."""
    import pickle

    plain = pickle.loads((rn50_files / "a.pdparams").read_bytes())
    assert all(v.flags.writeable for k, v in plain.items() if k != checkpoint.EXTRAS_KEY)
