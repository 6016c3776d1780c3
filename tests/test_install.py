"""Installed as users install it: the wheel and sdist that `python -m build` makes, and the wheel alone in a
fresh venv with only its core dependencies (no torch, no Paddle), where converting works and computing
names the extra that brings it (parity/testing/wheel.py says how the venv is made offline)."""
from __future__ import annotations

import subprocess
import tarfile
import warnings
import zipfile

import pytest
import torch

from parity.testing import wheel as wheels
from parity.testing.synthetic import release_archive

DATA = ("parity/text/vocabularies/bpe_simple_vocab_16e6.txt.gz", "parity/text/vocabularies/cn_clip_vocab.txt")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return wheels.build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    return wheels.fresh_venv(tmp_path_factory.mktemp("venv") / "v", built[0])


def run(venv, *args):
    return subprocess.run([str(venv / "parity"), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_wheel_and_the_sdist_carry_what_parity_reads_at_run_time(built):
    whl, sdist = built
    names = set(zipfile.ZipFile(whl).namelist())
    assert set(DATA) <= names and "parity/config/registry.py" in names and "parity/harness/inputs.py" in names
    assert not any(n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as tar:
        inside = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert set(DATA) <= inside and "LICENSE" in inside and "pyproject.toml" in inside
    core = [r for r in wheels.requires(whl) if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0] for r in core) == ["click", "ftfy", "numpy", "regex", "safetensors", "xxhash"]


def test_neither_framework_is_in_the_fresh_venv(venv):
    for module in ("torch", "paddle", "PIL", "clip"):
        result = subprocess.run([str(venv / "python"), "-c", f"import {module}"], capture_output=True, text=True)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, module


def test_convert_there_round_trips_bit_for_bit(venv, tmp_path):
    """A release-format RN50 .pt -> .pdparams -> .pt by the wheel alone; torch (here) reads both."""
    archive = release_archive("RN50")
    for src, to, out in ((archive, "paddle", tmp_path / "a.pdparams"), (tmp_path / "a.pdparams", "torch", tmp_path / "b.pt")):
        result = run(venv, "convert", src, "--to", to, "-o", out)
        assert result.returncode == 0, result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        want = torch.jit.load(str(archive)).state_dict()
    got = torch.load(tmp_path / "b.pt", weights_only=True)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape and torch.equal(got[k], w), k
    info = run(venv, "info", tmp_path / "b.pt")
    assert info.returncode == 0 and "RN50" in info.stdout


@pytest.mark.parametrize("args, extra", [
    (["verify", "{pt}"], "parity[verify]"),
    (["verify-all", "--variant", "RN50"], "parity[verify]"),
    (["logits", "{pt}", "--framework", "torch"], "parity[torch]"),
    (["logits", "{pt}", "--framework", "paddle"], "parity[paddle]"),
    (["export", "{pt}", "--to", "onnx", "-o", "{out}"], "parity[verify]"),
])
def test_a_command_whose_framework_is_missing_names_the_extra(venv, tmp_path, args, extra):
    pt = release_archive("RN50")
    result = run(venv, *(a.format(pt=pt, out=tmp_path / "out") for a in args))
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install '{extra}'" in lines[0], lines
    assert not (tmp_path / "out").exists()
