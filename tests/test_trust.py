"""The second red-team pass, class by class (the trust issue's numbering), and a conversion that carries its
config: each hostile input gets exit 2 and one line (never 3, never a hang, never memory that follows the
file's claims), nothing outside the output is touched, and a file converted to torch verifies without a
config given. The export folder's classes (1, 5, 7, 8) are in test_export_trust.py, the folder output's
race (6) and the second traceback (10) in test_io_formats_atomic.py.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hostile
from helpers import MB, PARITY, digest, one_line, refused, run, spawn

import parity
from parity.io.save import same_bits


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    """A tiny CLIP (2 heads at width 64: openai's rule would say 1) written by torch.save, no config."""
    import torch

    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save(hostile.tiny_state(), path)
    (path.parent / "tiny.json").write_text(json.dumps(hostile.tiny_config().to_dict()))
    return path


@pytest.fixture(scope="module")
def hf_folder(tiny_pt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    parity.convert(tiny_pt, "hf", out, config=tiny_pt.parent / "tiny.json")
    return out


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 2. --force never deletes the input
def test_2_an_output_folder_that_contains_the_input_file_is_refused(tiny_pt, tmp_path):
    folder = tmp_path / "D"
    folder.mkdir()
    src = folder / "x.pt"
    shutil.copy(tiny_pt, src)
    before = tree(folder)
    result = run("convert", src, "--to", "hf", "-o", folder, "--force", "--config", tiny_pt.parent / "tiny.json")
    refused(result, folder, "contains the input")
    assert tree(folder) == before


def test_2_an_output_folder_that_contains_the_input_folder_is_refused(hf_folder, tmp_path):
    work = tmp_path / "W"
    shutil.copytree(hf_folder, work / "x-hf")
    before = tree(work)
    refused(run("convert", work / "x-hf", "--to", "paddlenlp", "-o", work, "--force"), work, "contains the input")
    assert tree(work) == before


@pytest.mark.parametrize("force", [False, True])
def test_2_an_output_inside_the_input_folder_or_the_input_itself_is_refused(hf_folder, tmp_path, force):
    src = tmp_path / "x-hf"
    shutil.copytree(hf_folder, src)
    before = tree(src)
    extra = ["--force"] if force else []
    refused(run("convert", src, "--to", "paddle", "-o", src / "y.pdparams", *extra), src, "inside the input")
    refused(run("convert", src, "--to", "paddlenlp", "-o", src, *extra), src, "is the input")
    os.symlink(tmp_path, tmp_path / "link")  # the same folder by another name
    refused(run("convert", src, "--to", "hf", "-o", tmp_path / "link" / "x-hf", *extra), "is the input")
    assert tree(src) == before


def test_2_force_never_replaces_the_config_file_the_links_of_an_input_folder_or_a_stale_looking_input(
        tiny_pt, hf_folder, tmp_path):
    config = tmp_path / "cfg" / "tiny.json"
    config.parent.mkdir()
    shutil.copy(tiny_pt.parent / "tiny.json", config)
    refused(run("convert", tiny_pt, "--to", "hf", "-o", config.parent, "--force", "--config", config),
            "contains the input")
    refused(run("convert", tiny_pt, "--to", "paddle", "-o", config, "--force", "--config", config), "is the input")
    assert config.read_bytes() == (tiny_pt.parent / "tiny.json").read_bytes()
    # a Hugging Face cache: the snapshot folder's files are links into blobs/, which must survive too
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    shutil.copytree(hf_folder, blobs)
    snapshot.mkdir(parents=True)
    for f in blobs.iterdir():
        os.symlink(os.path.relpath(f, snapshot), snapshot / f.name)
    before = tree(blobs)
    refused(run("convert", snapshot, "--to", "paddlenlp", "-o", blobs, "--force"), "contains the input")
    assert tree(blobs) == before
    # an input named as parity names a dead run's temporary file or folder is an input, not a leftover
    stale_dir = tmp_path / ".parity-999999-aaaaaaaaaaaa.tmp"
    stale_dir.mkdir()
    shutil.copy(tiny_pt, stale_dir / "model.pt")
    stale_file = tmp_path / ".parity-999999-bbbbbbbbbbbb.tmp"
    shutil.copy(tiny_pt, stale_file)
    config = tiny_pt.parent / "tiny.json"
    for src, out in ((stale_dir / "model.pt", tmp_path / "a.pdparams"), (stale_file, tmp_path / "b.pdparams")):
        assert run("convert", src, "--to", "paddle", "-o", out, "--config", config).exit_code == 0
        assert src.is_file() and digest(src) == digest(tiny_pt)


def test_2_force_never_replaces_the_folder_of_a_linked_input_nor_a_fifo_or_device(tiny_pt, tmp_path):
    # a Hugging Face cache's snapshot: the input named is a link in snapshots/rev, pointing into blobs/
    (tmp_path / "blobs").mkdir()
    shutil.copy(tiny_pt, tmp_path / "blobs" / "abc")
    rev = tmp_path / "snapshots" / "rev"
    rev.mkdir(parents=True)
    os.symlink("../../blobs/abc", rev / "model.pt")
    config = tiny_pt.parent / "tiny.json"
    refused(run("convert", rev / "model.pt", "--to", "hf", "-o", rev, "--force", "--config", config),
            "contains the input")
    assert (rev / "model.pt").is_symlink() and digest(rev / "model.pt") == digest(tiny_pt)
    # an output that is a FIFO (or /dev/stdout, a device): never replaced, never written into
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for extra in ([], ["--force"]):
        refused(run("convert", tiny_pt, "--to", "torch", "-o", fifo, "--config", config, *extra),
                "not a regular file or folder")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ---------------------------------------------------------------- 3. a record allocates nothing from its say-so
def _with_record(hf_folder: Path, tmp_path: Path, record: dict) -> Path:
    """A PaddleNLP folder whose parity.json is `record`."""
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "nlp"
    parity.convert(hf_folder, "paddlenlp", out)
    (out / "parity.json").write_text(json.dumps(record))
    return out


@pytest.mark.parametrize("dtype", ["S1000000000", "S1000000", "O", "V8", "U3", "complex128"])
def test_3_a_record_names_only_numeric_dtypes(hf_folder, tmp_path, dtype):
    folder = _with_record(hf_folder, tmp_path, {"buffers": {"vocab_size": {"dtype": dtype, "value": [0, 0]}}})
    status, _, err, rss = spawn("info", folder)
    assert status == 2, err
    one_line(err, str(folder), "not one of the numeric dtypes")
    assert rss < 600 * MB, rss  # "S1000000000" made numpy allocate 2 GB from 1.7 KB
    folder2 = _with_record(hf_folder, tmp_path / "b", {"dtypes": {"logit_scale": dtype}})
    refused(run("info", folder2), "not one of the floating dtypes")


def test_3_a_record_in_safetensors_metadata_and_its_buffers_shapes_are_checked(tiny_pt, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "x.safetensors"
    parity.convert(tiny_pt, "safetensors", src, layout="paddle", config=tiny_pt.parent / "tiny.json")
    tensors = load_file(src)
    for extras in ({"buffers": {"vocab_size": {"dtype": "S1000000000", "value": [0, 0]}}},
                   {"buffers": {"vocab_size": {"dtype": "int64", "value": [1, 2, 3]}}},  # a scalar, as a list
                   {"buffers": {"vocab_size": {"dtype": "int64", "value": ["1"]}}},
                   {"buffers": {"vocab_size": {"dtype": "int64", "value": 10 ** 30}}},  # OverflowError
                   {"buffers": {"vocab_size": {"dtype": "uint8", "value": -1}}},
                   {"buffers": {"vocab_size": {"dtype": "int64", "value": float("inf")}}},
                   {"dtypes": {"visual.proj": "bool"}},  # a cast back to bool or int8 would ruin a weight
                   {"dtypes": {"visual.conv1.weight": "int8"}},
                   {"buffers": []}):
        bad = tmp_path / "bad.safetensors"
        bad.unlink(missing_ok=True)
        save_file(tensors, bad, {"format": "np", "parity.extras": json.dumps(extras)})
        result = run("info", bad)
        refused(result, bad)
        assert "internal error" not in result.output


def test_3_a_record_entry_in_a_torch_zip_is_bounded_and_checked(tiny_pt, tmp_path):
    import zipfile

    out = tmp_path / "x.pt"
    parity.convert(tiny_pt, "torch", out, config=tiny_pt.parent / "tiny.json")
    with zipfile.ZipFile(out) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    for name, body in (("overflow", b'{"buffers": {"vocab_size": {"dtype": "int64", "value": 1e400}}}'),
                       ("not utf-8", b"\xff\xfe{}"), ("a list", b"[1, 2]"),
                       ("many", b'{"x": [' + b"0," * 200_000 + b"0]}"),
                       ("contradicting", json.dumps({"config": {**hostile.tiny_config().to_dict(), "embed_dim": 64}}).encode())):
        bad = tmp_path / f"{name}.pt"
        with zipfile.ZipFile(bad, "w") as z:
            for info, data in entries:
                z.writestr(info, body if info.filename.endswith("/parity.json") else data)
        result = run("info", bad)
        refused(result, bad)
        assert "internal error" not in result.output


# ---------------------------------------------------------------- 4. --config FILE.json, bounded
def test_4_a_config_file_that_is_a_fifo_or_a_device_is_refused_without_waiting(tiny_pt, tmp_path):
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    os.symlink("/dev/zero", zero)
    for path in (fifo, zero):  # a blocking open of the FIFO hung forever; /dev/zero grew until killed
        done = subprocess.run([PARITY, "info", str(tiny_pt), "--config", str(path)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2, done.stderr
        one_line(done.stderr, str(path), "not a file")


def test_4_a_large_or_deep_config_file_is_refused_in_bounded_memory(tiny_pt, tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:  # 300 MB, sparse: its size alone refuses it
        f.truncate(300 * MB)
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    many = tmp_path / "many.json"
    many.write_bytes(b'{"config": [' + b"{}," * 300_000 + b"{}]}")  # 900 kB: under the byte cap, too many values
    for path, needle in ((big, "bytes, more than"), (deep, "values"), (many, "values")):
        status, _, err, rss = spawn("info", tiny_pt, "--config", path)
        assert status == 2, err
        one_line(err, str(path), needle)
        assert rss < 500 * MB, (path, rss)


def test_4_a_config_file_with_a_required_size_null_is_one_line(tiny_pt, tmp_path):
    """A size every CLIP has, given as null (found by the record fuzzer: exit 3 in validate)."""
    for tower, field in (("vision", "width"), ("text", "layers"), (None, "embed_dim"), ("text", "context_length")):
        data = hostile.tiny_config().to_dict()
        (data[tower] if tower else data)[field] = None
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(data))
        refused(run("info", tiny_pt, "--config", path), str(path), "is null")


# ---------------------------------------------------------------- 9. JSON and vocabularies that expand
def test_9_the_json_reader_bounds_values_and_depth_before_parsing():
    from parity.io.formats import bounded_json

    kind = bounded_json.Kind("test", 1 << 20, 100, 5)
    assert bounded_json.loads(b'{"a": [1, 2, {"b": "x,[{"}], "c": "\\"]"}', kind, "t") == \
        {"a": [1, 2, {"b": "x,[{"}], "c": '"]'}  # brackets and commas inside strings do not count
    with pytest.raises(parity.ParityError, match="JSON values"):
        bounded_json.loads(b'{"a": [' + b"1," * 100 + b"1]}", kind, "t")
    with pytest.raises(parity.ParityError, match="nested 6 deep"):
        bounded_json.loads(b'{"a": [[[[[1]]]]]}', kind, "t")
    with pytest.raises(parity.ParityError, match="not a JSON object"):
        bounded_json.loads(b"[1]", kind, "t")
    with pytest.raises(parity.ParityError, match="not JSON"):
        bounded_json.loads(b'{"a": [1, 2}', kind, "t")


@pytest.mark.parametrize("name,body", [
    ("config.json", b'{"text_config": {"x": [' + b"{}," * 300_000 + b"{}]}}"),
    ("model.safetensors.index.json", b'{"weight_map": {}, "metadata": [' + b"{}," * 5_000_000 + b"{}]}"),
])
def test_9_small_json_of_many_objects_is_refused_in_bounded_memory(hf_folder, tmp_path, name, body):
    folder = tmp_path / "f"
    shutil.copytree(hf_folder, folder)
    if name != "config.json":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / name).write_bytes(body)
    status, _, err, rss = spawn("info", folder)
    assert status == 2, err
    one_line(err, name, "JSON values")
    assert rss < 500 * MB, rss  # 5M {} in a 15 MB index took 468 MB


@pytest.mark.parametrize("index", [{"weight_map": {}}, {"weight_map": {"logit_scale": "a" * 300}},
                                   {"weight_map": {"logit_scale": "x\u0000y"}}])
def test_9_an_index_that_names_nothing_or_no_file_name_is_refused(hf_folder, tmp_path, index):
    folder = tmp_path / "f"
    shutil.copytree(hf_folder, folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for command in ("info", "convert"):
        result = run(command, folder, *(["--to", "paddle", "-o", tmp_path / "x.pdparams"] if command == "convert" else []))
        refused(result, "model.safetensors.index.json")
        assert "internal error" not in result.output


def test_a_library_config_name_in_a_files_own_metadata_is_not_a_config(tiny_pt, hf_folder, tmp_path):
    """Only a folder's config file is a library config; a single file's metadata holds strings by any name."""
    from safetensors.numpy import load_file, save_file

    hub = tmp_path / "x.safetensors"
    parity.convert(tiny_pt, "safetensors", hub, layout="openai", config=tiny_pt.parent / "tiny.json")
    for key, src in (("config.json", hf_folder / "model.safetensors"), ("open_clip_config.json", hub)):
        bad = tmp_path / f"{key}.safetensors"
        save_file(load_file(src), bad, {"format": "pt", key: json.dumps({"text_config": {"hidden_size": 8}})})
        result = run("info", bad, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["config from"] != key


def test_9_a_vocabulary_of_millions_of_tokens_is_counted_before_it_is_read(tmp_path):
    from parity.text.wordpiece import WordPiece

    vocab = tmp_path / "vocab.txt"
    letters = [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens = (a + b + c + d + e for a in letters for b in letters for c in letters for d in letters for e in letters[:2])
    vocab.write_bytes(b"[CLS]\n[SEP]\n[UNK]\n" + b"\n".join(t for _, t in zip(range(2_500_000), tokens)) + b"\n")
    assert vocab.stat().st_size < 16 * MB  # within the byte cap: only the count refuses it
    code = ("import resource\nfrom parity.text.wordpiece import WordPiece\nfrom parity.errors import ParityError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"try:\n    WordPiece({str(vocab)!r})\nexcept ParityError as e:\n    print(e)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "a WordPiece vocabulary of 2500003 lines, more than" in out[0], out
    # the file (15 MB) is read, nothing is built from it: a dict of 2.5M tokens took 400 MB
    assert int(out[1]) < 100 * MB, out
    small = tmp_path / "small.txt"
    small.write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\n一\n")
    assert WordPiece(small).vocab["一"] == 4


# ---------------------------------------------------------------- a conversion never forgets what it knew
def test_a_torch_file_written_by_parity_carries_its_config_and_loads_everywhere(tiny_pt, tmp_path):
    import torch

    from parity.testing.official import official_model_module

    out = tmp_path / "x.pt"
    parity.convert(tiny_pt, "torch", out, config=tiny_pt.parent / "tiny.json")
    ck = parity.load(out)
    assert ck.config == hostile.tiny_config() and ck.config_source == "the file's own record"
    assert ck.provenance["source"]["file"] == "tiny.pt"
    original = torch.load(tiny_pt)
    for state in (torch.load(out), torch.load(out, weights_only=True)):
        assert sorted(state) == sorted(original)
        assert all(torch.equal(state[k], original[k]) for k in original)
    # openai's build_model (64-wide heads: it builds 1 head here, which is why the config must travel)
    model = official_model_module().build_model(torch.load(out, weights_only=True))
    assert sorted(model.state_dict()) == sorted(k for k in original if k not in parity.layouts.HUB.ARCHIVE_ENTRIES)
    # without a config, the file says none: no record with a config is written, and convert says so
    result = run("convert", tiny_pt, "--to", "torch", "-o", tmp_path / "bare.pt")
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: ") == 1 and "will need --config NAME|FILE.json" in result.output
    assert parity.load(tmp_path / "bare.pt", config=tiny_pt.parent / "tiny.json").config == hostile.tiny_config()


def _features(out: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(out["image_features"], np.float64), np.asarray(out["text_features"], np.float64)


def _close(got, want, what):
    excess = np.abs(got - want) - (1e-4 + 1e-4 * np.abs(want))
    assert got.shape == want.shape and excess.max() <= 0, (what, float(np.abs(got - want).max()))


def _converted_computes(src: Path, to: str, want: tuple, tmp_path: Path) -> None:
    """`src` converted to a torch .pt (no warning: its config travels), then `logits` in both frameworks
    and `verify`, without --config: the library's features `want` (image, text) within 1e-4."""
    out = tmp_path / "converted.pt"
    result = run("convert", src, "--to", to, "-o", out)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert parity.load(out).config_source == "the file's own record"
    for framework in ("torch", "paddle"):
        result = run("logits", out, "--framework", framework, "--json")
        assert result.exit_code == 0, result.output
        for got, expected, name in zip(_features(json.loads(result.output)), want, ("image", "text")):
            _close(got, expected, f"{framework} {name}")
    result = run("verify", out, "--report-dir", tmp_path / "r")
    assert result.exit_code == 0 and "PASS" in result.output, result.output


def test_a_paddlenlp_model_converted_to_torch_verifies_without_a_config(tmp_path):
    """PaddleNLP's own CLIPModel with 2 heads at width 64 (openai's rule says 1), saved by PaddleNLP."""
    warnings.simplefilter("ignore")
    from paddlenlp.transformers import CLIPConfig, CLIPModel

    from parity.models.frameworks import import_paddle
    from parity.harness.inputs import canonical_inputs

    paddle = import_paddle()
    paddle.seed(0)
    tower = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                 hidden_act="quick_gelu")
    config = CLIPConfig(text_config=dict(tower, max_position_embeddings=77, vocab_size=49408),
                        vision_config=dict(tower, image_size=32, patch_size=16), projection_dim=32)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(tmp_path / "nlp"))
    image, text = canonical_inputs(32)
    with paddle.no_grad():
        want = (model.get_image_features(pixel_values=paddle.to_tensor(image)).numpy()[0].astype(np.float64),
                model.get_text_features(input_ids=paddle.to_tensor(text)).numpy()[0].astype(np.float64))
    _converted_computes(tmp_path / "nlp", "torch", want, tmp_path)


def test_a_passl_model_converted_to_torch_verifies_without_a_config(tmp_path):
    """PASSL's CLIPWrapper (it builds by openai's rule: 64-wide heads, QuickGELU, eps 1e-5), saved as its
    notebooks save it; its shapes are in no registry entry, so its config comes from the layout's rule."""
    warnings.simplefilter("ignore")
    from test_oracles import STUBS

    from parity.models.frameworks import import_paddle
    from parity.harness.inputs import canonical_inputs

    paddle = import_paddle()
    sys.path.insert(0, str(STUBS))
    import paddle_fluid
    paddle_fluid.install()
    from passl.modeling.architectures import CLIPWrapper

    paddle.seed(0)
    arch = {"name": "CLIP", "embed_dim": 32, "image_resolution": 32, "vision_layers": 2, "vision_width": 128,
            "vision_patch_size": 16, "context_length": 77, "vocab_size": 49408, "transformer_width": 128,
            "transformer_heads": 2, "transformer_layers": 2, "qkv_bias": True}
    model = CLIPWrapper(architecture=arch, head={"name": "CLIPHead"})
    model.eval()
    paddle.save({"state_dict": model.state_dict()}, str(tmp_path / "passl.pdparams"))
    info = parity.load(tmp_path / "passl.pdparams")
    assert info.config.complete and info.config_source.startswith("the passl layout: PASSL's CLIP builds")
    image, text = canonical_inputs(32)
    with paddle.no_grad():
        want = (model.model.encode_image(paddle.to_tensor(image)).numpy()[0].astype(np.float64),
                model.model.encode_text(paddle.to_tensor(text)).numpy()[0].astype(np.float64))
    _converted_computes(tmp_path / "passl.pdparams", "openai", want, tmp_path)


def test_the_hf_layout_keeps_a_folders_own_eos_and_writes_2_otherwise(hf_folder, tmp_path):
    def eos(folder):
        return json.loads((folder / "config.json").read_text())["text_config"]["eos_token_id"]

    assert eos(hf_folder) == 2  # transformers' argmax pooling, openai's rule
    own = tmp_path / "own"
    shutil.copytree(hf_folder, own)
    config = json.loads((own / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 49407
    (own / "config.json").write_text(json.dumps(config))
    parity.convert(own, "hf", tmp_path / "again")
    assert eos(tmp_path / "again") == 49407
    parity.convert(own, "paddle", tmp_path / "p.pdparams")
    parity.convert(tmp_path / "p.pdparams", "hf", tmp_path / "from-paddle")
    assert eos(tmp_path / "from-paddle") == 2
    back = parity.load(tmp_path / "again").hub_state()
    assert all(same_bits(back[k], v) for k, v in parity.load(own).hub_state().items())
