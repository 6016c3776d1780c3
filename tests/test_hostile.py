"""Bad input to `parity convert` / `parity info`: one line, exit status 2, nothing left behind, no code run."""
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from helpers import digest, listing, refused, run
from parity.testing.synthetic import cached_state_dict, release_archive


@pytest.fixture(scope="module")
def rn50(tmp_path_factory):
    """RN50's state dict (torch tensors) and a plain torch.save of it."""
    folder = tmp_path_factory.mktemp("rn50")
    state = cached_state_dict("RN50")
    torch.save(state, folder / "RN50.pt")
    return state, folder / "RN50.pt"


def _save(folder, name, state):
    path = folder / name
    torch.save(state, path)
    return path


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_zip_with(path, obj):
    """A torch.save-style zip whose data.pkl is `obj` pickled (as a hand-made malicious .pt is)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")


def test_the_payload_is_live(tmp_path):
    # the control: plain pickle.loads runs it, so its absence below means parity did not
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"w": Payload(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pt", "pdparams", "torchscript"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "ran"
    if kind == "pt":
        src = tmp_path / "evil.pt"
        _torch_zip_with(src, {"state_dict": {"visual.proj": Payload(marker)}})
    elif kind == "pdparams":
        src = tmp_path / "evil.pdparams"
        src.write_bytes(pickle.dumps({"visual.proj": np.ones(3), "x": Payload(marker)}, protocol=4))
    else:  # a TorchScript archive whose data.pkl was swapped for a payload
        src = tmp_path / "evil-ts.pt"
        with zipfile.ZipFile(release_archive("RN50")) as good, zipfile.ZipFile(src, "w") as bad:
            for name in good.namelist():
                data = good.read(name) if not name.endswith("data.pkl") else pickle.dumps(Payload(marker))
                bad.writestr(name, data)
    before = listing(tmp_path)
    target = "torch" if kind == "pdparams" else "paddle"
    refused(run("convert", src, "--to", target), "refused to load global", "system", "nothing in the file was run")
    refused(run("info", src), "refused to load global")
    assert not marker.exists()
    assert listing(tmp_path) == before


def test_missing_empty_truncated_and_random_files(tmp_path, rn50):
    _, good = rn50
    refused(run("convert", tmp_path / "nope.pt", "--to", "paddle"), "nope.pt: no such file")
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(run("convert", tmp_path / "empty.pt", "--to", "paddle"), "empty file")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    refused(run("convert", tmp_path / "noise.bin", "--to", "torch"), "not a checkpoint")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    refused(run("convert", tmp_path / "cut.pt", "--to", "paddle"), "cut.pt", "truncated or corrupt")
    refused(run("info", tmp_path / "cut.pt"), "truncated or corrupt")

    pd = tmp_path / "whole.pdparams"
    assert run("convert", good, "--to", "paddle", "-o", pd).exit_code == 0
    (tmp_path / "cut.pdparams").write_bytes(pd.read_bytes()[: pd.stat().st_size // 2])
    refused(run("convert", tmp_path / "cut.pdparams", "--to", "torch", "-o", tmp_path / "back.pt"),
                   "truncated or corrupt")
    st = tmp_path / "whole.safetensors"
    assert run("convert", good, "--to", "safetensors", "-o", st).exit_code == 0
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[: st.stat().st_size - 1000])
    refused(run("convert", tmp_path / "cut.safetensors", "--to", "torch", "-o", tmp_path / "back.pt"),
                   "truncated or corrupt")
    assert not (tmp_path / "back.pt").exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_state_dict_of_another_model(tmp_path):
    src = _save(tmp_path, "resnet.pt", {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.running_mean": torch.zeros(64),
                                        "fc.weight": torch.zeros(1000, 2048)})
    refused(run("convert", src, "--to", "paddle"), "not a CLIP checkpoint", "conv1.weight")
    src = _save(tmp_path, "bert.pt", {"embeddings.word_embeddings.weight": torch.zeros(10, 4)})
    refused(run("convert", src, "--to", "paddle"), "not a CLIP checkpoint")
    src = _save(tmp_path, "list.pt", [torch.zeros(3)])
    refused(run("convert", src, "--to", "paddle"), "holds a list, not a state dict")


def test_missing_extra_and_misshaped_tensors(tmp_path, rn50):
    state, _ = rn50
    missing = {k: v for k, v in state.items() if k != "ln_final.bias"}
    refused(run("convert", _save(tmp_path, "m.pt", missing), "--to", "paddle"), "missing: ln_final.bias")
    extra = {**state, "visual.head.weight": torch.zeros(3)}
    refused(run("convert", _save(tmp_path, "e.pt", extra), "--to", "paddle"), "unexpected: visual.head.weight")
    bad = {**state, "ln_final.weight": torch.zeros(7)}
    refused(run("convert", _save(tmp_path, "s.pt", bad), "--to", "paddle"),
                   "mis-shaped: ln_final.weight [7] (expected [512])")
    assert not any(p.suffix == ".pdparams" for p in tmp_path.iterdir())


def test_nan_warns_and_strict_refuses(tmp_path, rn50):
    state, _ = rn50
    weight = state["ln_final.weight"].clone()
    weight[3] = float("nan")
    src = _save(tmp_path, "nan.pt", {**state, "ln_final.weight": weight})
    strict = run("convert", src, "--to", "paddle", "--strict")
    refused(strict, "NaN or Inf in 1 tensors (ln_final.weight)", "--strict")
    assert not src.with_suffix(".pdparams").exists()
    result = run("convert", src, "--to", "paddle")
    assert result.exit_code == 0 and "warning: " in result.output and "ln_final.weight" in result.output
    assert src.with_suffix(".pdparams").exists()


def test_nan_in_a_tensor_not_converted_is_still_found(tmp_path, rn50):
    """NaN and Inf are checked as each tensor is read to be written; a tower written alone leaves the
    other tower's tensors unread, and those are read and checked too."""
    state, _ = rn50
    weight = state["visual.layer1.0.conv1.weight"].clone()
    weight[0, 0, 0, 0] = float("inf")
    src = _save(tmp_path, "inf.pt", {**state, "visual.layer1.0.conv1.weight": weight})
    result = run("convert", src, "--tower", "text", "--to", "openai", "-o", tmp_path / "text.pt")
    assert result.exit_code == 0 and "NaN or Inf in 1 tensors (visual.layer1.0.conv1.weight)" in result.output
    refused(run("convert", src, "--tower", "text", "--to", "openai", "-o", tmp_path / "strict.pt", "--strict"),
            "NaN or Inf in 1 tensors (visual.layer1.0.conv1.weight)")
    assert not (tmp_path / "strict.pt").exists()


def test_variant_option(tmp_path, rn50):
    _, good = rn50
    refused(run("convert", good, "--to", "paddle", "-o", tmp_path / "x.pdparams", "--variant", "RN42"),
                   "unknown model 'RN42'")
    refused(run("convert", good, "--to", "paddle", "-o", tmp_path / "x.pdparams", "--variant", "ViT-B/32"),
                   "the config says embed_dim 512 but", "tensors say 1024")
    ok = run("convert", good, "--to", "paddle", "-o", tmp_path / "x.pdparams", "--variant", "rn50")
    assert ok.exit_code == 0 and ok.output.startswith("RN50: ")


def test_unwritable_output_and_existing_output(tmp_path, rn50):
    _, good = rn50
    (tmp_path / "afile").write_text("not a folder")
    refused(run("convert", good, "--to", "paddle", "-o", tmp_path / "afile" / "x.pdparams"), "cannot write")
    existing = tmp_path / "out.pdparams"
    existing.write_bytes(b"precious")
    refused(run("convert", good, "--to", "paddle", "-o", existing), "already exists", "--force")
    assert existing.read_bytes() == b"precious"
    assert run("convert", good, "--to", "paddle", "-o", existing, "--force").exit_code == 0
    assert existing.stat().st_size > 1e8


def test_input_is_never_the_output_nor_modified(tmp_path, rn50):
    _, good = rn50
    src = tmp_path / "RN50.pt"
    shutil.copy(good, src)
    before = digest(src)
    refused(run("convert", src, "--to", "torch", "--force"), "is the input file")  # default name = input
    refused(run("convert", src, "--to", "torch", "-o", tmp_path / "." / "RN50.pt", "--force"), "is the input file")
    os.link(src, tmp_path / "alias.pt")
    refused(run("convert", src, "--to", "torch", "-o", tmp_path / "alias.pt", "--force"), "is the input file")
    assert run("convert", src, "--to", "paddle").exit_code == 0
    assert digest(src) == before


def test_a_fragment_of_a_layout_is_not_a_clip(tmp_path):
    # PASSL's telltale fused qkv, but no text tower: not a CLIP in any layout (a PASSL ResNet: test_config_cli)
    state = {f"blocks.{i}.attn.qkv.weight": np.zeros((12, 4), np.float32) for i in range(2)}
    state["cls_token"] = np.zeros((1, 1, 4), np.float32)
    src = tmp_path / "passl.pdparams"
    src.write_bytes(pickle.dumps({"state_dict": {f"model.{k}": v for k, v in state.items()}}, protocol=4))
    refused(run("convert", src, "--to", "torch"), "not a CLIP checkpoint", "no telltale key")


def test_a_failed_check_keeps_nothing(tmp_path, rn50, monkeypatch):
    """The reload-and-compare step is real: a writer that corrupts one byte is caught, no output kept."""
    from parity.io.formats import pdparams
    _, good = rn50
    real = pdparams.write

    def corrupting(f, tensors, record, wrap=None):
        tensors = {k: tensors[k].copy() for k in tensors}
        tensors["ln_final.bias"].view(np.uint8)[0] ^= 1
        real(f, tensors, record, wrap)

    monkeypatch.setattr(pdparams, "write", corrupting)
    out = tmp_path / "x.pdparams"
    refused(run("convert", good, "--to", "paddle", "-o", out), "does not read back as written", "ln_final.bias")
    assert listing(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path):
    from parity.errors import CheckpointError

    missing = tmp_path / "nope.pt"
    result = run("convert", missing, "--to", "paddle", "--debug")
    # --debug re-raises the library's error itself (cli_support.fail) in place of the one-line exit 2: it
    # leaves click uncaught, so Python prints its traceback and exits 1, as CliRunner reports it here
    assert result.exit_code == 1 and type(result.exception) is CheckpointError, (result.exit_code, result.exception)
    assert str(result.exception.path) == str(missing) and result.exception.message == "no such file"
    assert result.output == ""  # no "Error: " line: the traceback says it
