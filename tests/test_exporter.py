"""Verified export (parity export / verify-export): RN50 and ViT-B/32 to Paddle Inference and ONNX, both
towers, each loaded in its own runtime (paddle.inference, onnxruntime) and held to parity's torch model by
verify's gate on the canonical pair and the photographs, from one export at batches 3 and 1; Chinese-CLIP's
BERT too. A swapped parameters file fails the later check (1); a missing or corrupt file is one line (2).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

import parity
from helpers import linked_copy, refused, run
from parity.config import registry
from parity.exporter import paddle_graph, runner
from parity.harness.inputs import sample_set
from parity.models.build import torch_model
from parity.testing.synthetic import cached_state_dict, release_archive

CASES = [("RN50", "paddle-inference"), ("RN50", "onnx"), ("ViT-B/32", "paddle-inference"), ("ViT-B/32", "onnx")]
_EXPORTS: dict = {}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each case exported once, when first asked for."""
    folder = tmp_path_factory.mktemp("exports")

    def get(model: str, fmt: str):
        key = (model, fmt)
        if key not in _EXPORTS:
            warnings.simplefilter("ignore")
            out = folder / f"{model.replace('/', '')}-{fmt}"
            _EXPORTS[key] = (out, parity.export(release_archive(model), fmt, out))
        return _EXPORTS[key]
    return get


_FEATURES: dict = {}


def _torch_image_features(model: str, images):
    """parity's torch model's image features of the photographs, once per model (both formats use them)."""
    if model not in _FEATURES:
        import torch
        net = torch_model(parity.load(release_archive(model)).hub_state(), registry.get(model).config)
        with torch.no_grad():
            _FEATURES[model] = net.encode_image(torch.from_numpy(images)).numpy()
    return _FEATURES[model]


@pytest.mark.parametrize("model,fmt", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_both_towers_export_load_in_their_runtime_and_pass_the_gate(model, fmt, exports, figures):
    out, report = exports(model, fmt)
    assert report.passed, report.summary()
    for tower in ("image", "text"):
        for name in ("canonical", "photos"):
            r = report.results[tower][name]
            figures.append(f"export {model:8} {fmt:16} {tower:5} {name:9} |Δ| {r['max_abs']:.1e} (bound {r['bound']:.1e})")
    manifest = json.loads((out / "manifest.json").read_text())
    config = registry.get(model).config
    source = release_archive(model)
    assert manifest["source"]["sha256"] == parity.load(source).sha256 and manifest["verification"]["passed"]
    assert manifest["inputs"]["image"] == {"name": "image", "shape": [None, 3, config.vision.image_size,
                                                                      config.vision.image_size], "dtype": "float32"}
    assert manifest["inputs"]["text"] == {"name": "text", "shape": [None, 77], "dtype": "int64"}
    graphs = ["image.json", "image.pdiparams", "text.json", "text.pdiparams"] if fmt == "paddle-inference" else \
        ["image.onnx", "text.onnx"]
    assert sorted(manifest["files"]) == sorted(graphs + ["bpe_simple_vocab_16e6.txt.gz", "preprocess.json",
                                                         "tokenizer.json", "reference.json"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["files"], "manifest.json", "report.md"])
    assert "**PASS**" in (out / "report.md").read_text()
    # one export, batches of 3 and 1, straight from the runtime, against parity's torch model
    shots = sample_set(config.vision.image_size)
    want = _torch_image_features(model, shots.images)
    run = runner(out, fmt, "image")
    for batch in (shots.images[:3], shots.images[:1]):
        got = run(batch)
        assert got.shape == (len(batch), config.embed_dim)
        assert np.abs(got - want[:len(batch)]).max() <= 4 * report.results["image"]["photos"]["bound"]
    # later: against the recorded reference (and, in the swap test below, the checkpoint computed afresh)
    assert parity.verify_export(out).passed


def test_a_swapped_parameters_file_fails_verify_export(exports, tmp_path):
    out, _ = exports("ViT-B/32", "paddle-inference")
    swapped = linked_copy(out, tmp_path / "swapped")
    source = release_archive("ViT-B/32")
    result = run("verify-export", out, source)
    assert result.exit_code == 0 and "PASS" in result.output, result.output
    ck = parity.load(source)
    state = ck.in_layout("paddle").state_dict
    state["text_projection"] = state["text_projection"] * np.float32(1.01)  # a fine-tune: another model, same shapes
    paddle_graph(state, ck.config, "text", tmp_path)
    os.unlink(swapped / "text.pdiparams")
    shutil.copy(tmp_path / "text.pdiparams", swapped / "text.pdiparams")
    result = run("verify-export", swapped)
    assert result.exit_code == 1 and "FAIL" in result.output, result.output
    assert "files changed since the export: text.pdiparams" in result.output
    result = run("verify-export", swapped, source, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["results"]["image"]["canonical"]["passed"] and not report["results"]["text"]["canonical"]["passed"]


def test_a_missing_or_corrupt_file_is_one_line_and_exit_2(exports, tmp_path):
    out, _ = exports("ViT-B/32", "onnx")
    missing = linked_copy(out, tmp_path / "missing")
    os.unlink(missing / "image.onnx")
    refused(run("verify-export", missing), "image.onnx: missing from the export")
    out, _ = exports("ViT-B/32", "paddle-inference")
    corrupt = linked_copy(out, tmp_path / "corrupt")
    data = (out / "image.pdiparams").read_bytes()
    os.unlink(corrupt / "image.pdiparams")
    (corrupt / "image.pdiparams").write_bytes(data[: len(data) // 3])
    refused(run("verify-export", corrupt), "cannot load the image tower")
    (tmp_path / "empty").mkdir()
    refused(run("verify-export", tmp_path / "empty"), "not a parity export folder")
    refused(run("export", release_archive("ViT-B/32"), "--to", "onnx", "-o", out), "already exists")
    assert not any(p.name.startswith(".parity-") for p in out.parent.iterdir())


def test_the_readme_deployment_example_predicts_what_torch_predicts(exports):
    """Plain Paddle Inference on the folder, with parity's preprocessing and tokenizer (README: deployment)."""
    out, _ = exports("ViT-B/32", "paddle-inference")
    from parity.models.frameworks import import_paddle

    import_paddle()
    from paddle import inference

    def predictor(tower):
        config = inference.Config(str(out / f"{tower}.json"), str(out / f"{tower}.pdiparams"))
        if tower == "text":
            config.disable_mkldnn()  # oneDNN makes a text tower's predictor about 15x slower
        return inference.create_predictor(config)

    def run(p, x):
        p.get_input_handle(p.get_input_names()[0]).copy_from_cpu(x)
        p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()

    from parity.harness.inputs import SAMPLES, sample_path
    names = list(SAMPLES)
    images = np.stack([parity.preprocess(sample_path(n), 224) for n in names])
    texts = parity.tokenize([SAMPLES[n] for n in names])
    image_features, text_features = run(predictor("image"), images), run(predictor("text"), texts)
    image_features /= np.linalg.norm(image_features, axis=1, keepdims=True)
    text_features /= np.linalg.norm(text_features, axis=1, keepdims=True)
    exported = image_features @ text_features.T
    shots = sample_set(224)
    net = torch_model(parity.load(release_archive("ViT-B/32")).hub_state(), registry.get("ViT-B/32").config)
    import torch
    with torch.no_grad():
        a = net.encode_image(torch.from_numpy(shots.images)).numpy()
        b = net.encode_text(torch.from_numpy(shots.tokens)).numpy()
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    assert (exported.argmax(axis=1) == (a @ b.T).argmax(axis=1)).all()
    assert np.abs(exported - a @ b.T).max() < 1e-5


@pytest.mark.parametrize("fmt", ["paddle-inference", "onnx"])
def test_chinese_clips_bert_exports_and_passes(fmt, tmp_path):
    """cn_clip/RN50 (RBT3): the BERT's padding mask and [CLS] pooling survive both exports; its folder
    holds vocab.txt and says the context (52)."""
    warnings.simplefilter("ignore")
    import torch

    config = registry.get("cn_clip/RN50").config
    source = tmp_path / "epoch_latest.pt"
    torch.save({"state_dict": cached_state_dict(config)}, source)
    out = tmp_path / fmt
    report = parity.export(source, fmt, out, towers=("text",))
    assert report.passed, report.summary()
    assert json.loads((out / "tokenizer.json").read_text())["context_length"] == 52
    assert (out / "vocab.txt").is_file() and json.loads((out / "manifest.json").read_text())["towers"] == ["text"]
    assert parity.verify_export(out).passed
