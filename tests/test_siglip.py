"""SigLIP through parity's contracts: transformers' SiglipModel, SiglipTextModel and SiglipVisionModel folders
(the oracle) converted to parity's Paddle layout and back, computed by parity's torch and Paddle models,
verified, diagnosed; the registry's so400m on the meta device.

A tiny non-default config: an image tower 48 wide (24-wide heads), a text tower 64 wide (32-wide heads)
whose head projects to 48, 3 layers, MLPs of 96 and 112, images of 36 pixels in patches of 8 (a 4 x 4 grid:
the last 4 pixels dropped, as so400m drops 6 of 384), a 16-token context, and a SentencePiece model
trained here offline (nothing can be downloaded). transformers runs its eager attention: the same
operations as parity's (its SDPA kernel rounds otherwise: 1.3e-6 apart after three layers).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import parity
from parity import layouts
from parity.config import registry
from parity.config.schema import Config
from helpers import refused, run, siglip_inputs

VISION = dict(hidden_size=48, intermediate_size=96, num_attention_heads=2, num_hidden_layers=3, image_size=36,
              patch_size=8)
TEXT = dict(hidden_size=64, intermediate_size=112, num_attention_heads=2, num_hidden_layers=3, vocab_size=128,
            max_position_embeddings=16, projection_size=48)
TORCH_BOUND = 1e-6  # parity's torch model against transformers (eager attention)
PADDLE_BOUND = 1e-4  # parity's Paddle model against transformers
CORPUS = ["a photo of a cat", "a photo of a dog", "two cats sleeping on a red sofa", "a rocket standing on a launchpad",
          "a cup of coffee on a saucer", "a portrait of an astronaut with the american flag", "a page of text",
          "a red motorcycle standing in a garage", "a person looking at a camera on a tripod", "a horse"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """transformers' SiglipModel saved with save_pretrained, its norms, biases, probe, scale and bias moved
    off their init, and a SentencePiece model beside it."""
    import sentencepiece
    import torch
    import transformers

    warnings.simplefilter("ignore")
    out = tmp_path_factory.mktemp("siglip") / "hf"
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "probe" in name or name.startswith("logit"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(out / "spiece"), vocab_size=100, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (out / "spiece.vocab").unlink()
    return out


def oracle(folder: Path, cls: str = "SiglipModel"):
    import transformers

    warnings.simplefilter("ignore")
    model, info = getattr(transformers, cls).from_pretrained(folder, attn_implementation="eager",
                                                             output_loading_info=True)
    assert not any(info.values()), info  # loaded strictly: nothing missing, unexpected or mis-shaped
    return model.eval()



def test_transformers_folder_reads_with_its_config(folder):
    ck = parity.load(folder)
    c = ck.config
    assert (ck.layout, ck.config_source, c.embed_dim) == ("hf", "config.json", 48)
    assert (c.vision.kind, c.vision.image_size, c.vision.heads, c.vision.activation, c.vision.eps) == \
        ("siglip_vit", 36, 2, "gelu_tanh", 1e-6)
    assert (c.text.kind, c.text.context_length, c.text.mlp_width, c.text.heads) == ("siglip_text", 16, 112, 2)
    # the tensors say the grid's 32 pixels; the config's 36 fits them, and a config of 40 (a 5 x 5 grid) does not
    assert ck.state_dict["vision_model.embeddings.position_embedding.weight"].shape == (16, 48)
    wrong = Config.from_dict({**c.to_dict(), "vision": {**c.to_dict()["vision"], "image_size": 40}})
    with pytest.raises(parity.ParityError, match="image_size 40 but"):
        wrong.check_shapes(c.shapes())


def test_paddle_layout_and_back_are_bit_exact(folder, tmp_path):
    import transformers

    parity.convert(folder, "paddle", tmp_path / "siglip.pdparams")
    paddle_keys = set(parity.load(tmp_path / "siglip.pdparams").state_dict)
    # the MAP head's fused in_proj split into Paddle Linears; nothing else renamed
    assert {"vision_model.head.attention.q_proj.weight", "logit_bias"} <= paddle_keys
    assert not any("in_proj" in k for k in paddle_keys)
    parity.convert(tmp_path / "siglip.pdparams", "hf", tmp_path / "back")
    source, back = parity.load(folder).state_dict, parity.load(tmp_path / "back").state_dict
    assert list(source) == list(back) or sorted(source) == sorted(back)
    assert all(source[k].dtype == back[k].dtype and source[k].tobytes() == back[k].tobytes() for k in source)
    oracle(tmp_path / "back")  # transformers loads parity's folder strictly
    assert isinstance(transformers.AutoConfig.from_pretrained(tmp_path / "back"), transformers.SiglipConfig)


def test_the_folder_written_holds_siglips_processor(folder, tmp_path):
    """hf to hf: transformers' SiglipProcessor loads parity's folder and tokenizes as parity does; the
    image processor squashes to the image size with mean and std 0.5."""
    import transformers

    warnings.simplefilter("ignore")
    parity.convert(folder, "hf", tmp_path / "out")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__ == "SiglipProcessor"
    ids = processor(text=CORPUS, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert np.array_equal(np.asarray(ids), parity.towers.text(parity.load(folder).config).tokenize(
        CORPUS, 16, tmp_path / "out" / "spiece.model"))
    assert processor.image_processor.size == {"height": 36, "width": 36}
    assert processor.image_processor.image_mean == [0.5, 0.5, 0.5]


def test_parity_models_compute_what_transformers_computes(folder):
    import torch
    from parity.models.build import paddle_model, torch_model

    paddle = __import__("parity.models.frameworks", fromlist=["import_paddle"]).import_paddle()
    image, ids = siglip_inputs(36, 128)
    theirs = oracle(folder)
    with torch.no_grad():
        out = theirs(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(image))
        vision = theirs.vision_model(pixel_values=torch.from_numpy(image))
        text = theirs.text_model(input_ids=torch.from_numpy(ids))
    # SiglipModel's image_embeds and text_embeds are normalised: the towers' pooler outputs are the embeddings
    expected = {"logits": out.logits_per_image, "image": vision.pooler_output, "text": text.pooler_output,
                "image_last": vision.last_hidden_state, "text_last": text.last_hidden_state}
    expected = {k: v.numpy() for k, v in expected.items()}
    ck = parity.load(folder)
    mine = torch_model(ck.hub_state(), ck.config)
    with torch.no_grad():
        got = {"image": mine.encode_image(torch.from_numpy(image)), "text": mine.encode_text(torch.from_numpy(ids)),
               "image_last": mine.states("image", torch.from_numpy(image))["last_hidden_state"],
               "text_last": mine.states("text", torch.from_numpy(ids))["last_hidden_state"]}
        got["logits"] = mine.logits(got["image"], got["text"])[0]
    for name, value in got.items():
        assert np.abs(value.numpy() - expected[name]).max() <= TORCH_BOUND, name
    ours = paddle_model(ck.plan_in("paddle"), ck.config)
    with paddle.no_grad():
        p_image, p_text = ours.encode_image(paddle.to_tensor(image)), ours.encode_text(paddle.to_tensor(ids))
        pgot = {"image": p_image, "text": p_text, "logits": ours.logits(p_image, p_text)[0],
                "image_last": ours.states("image", paddle.to_tensor(image))["last_hidden_state"],
                "text_last": ours.states("text", paddle.to_tensor(ids))["last_hidden_state"]}
    for name, value in pgot.items():
        assert np.abs(value.numpy() - expected[name]).max() <= PADDLE_BOUND, name


def test_verify_passes_with_sigmoid_probabilities_and_photographs(folder):
    report = parity.verify(folder, device="cpu")
    assert report.passed and report.loss == "sigmoid"
    assert report.inputs["canonical"].endswith("text ids ones (1, 16) int64")
    p_torch, p_paddle = report.probabilities()
    assert p_torch == pytest.approx(1 / (1 + math.exp(-report.torch_logit)))
    assert abs(p_torch - p_paddle) < 1e-6
    assert report.photos is not None and report.photos.argmax_agreement == 1.0  # spiece.model tokenized the captions
    assert "sigmoid torch" in parity.harness.report.verdict(report)
    for framework in ("torch", "paddle"):  # `parity logits` shows it too
        out = parity.logits(folder, framework, device="cpu")
        assert out["sigmoid"] == pytest.approx(1 / (1 + math.exp(-out["logit"])))


def test_without_its_tokenizer_the_photographs_are_left_out(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "bare", ignore=shutil.ignore_patterns("spiece.model"))
    report = parity.verify(tmp_path / "bare", device="cpu")
    assert report.passed and report.photos is None and report.inputs["photos"] == []


def test_synthetic_weights_verify_as_verify_all_does(folder):
    """verify-all's path for a registered SigLIP: synthetic weights (norm gains near one, SigLIP's initial bias
    of -10), no tokenizer, so no photographs; the canonical pair gates."""
    from parity.harness.run import verify_state_dict
    from parity.harness.weights import make_state_dict

    config = parity.load(folder).config
    state = make_state_dict(config, 0)
    assert float(state["logit_bias"][0]) == -10.0 and state["logit_bias"].shape == (1,)
    report = verify_state_dict(state, "synthetic seed 0", config, device="cpu")
    assert report.passed and report.photos is None and report.loss == "sigmoid"


def test_verify_names_the_map_heads_layernorm(folder, tmp_path):
    parity.convert(folder, "paddle", tmp_path / "siglip.pdparams")
    ck = parity.load(tmp_path / "siglip.pdparams")
    state = dict(ck.state_dict)
    state["vision_model.head.layernorm.weight"] = state["vision_model.head.layernorm.weight"] * np.float32(1.05)
    parity.save(parity.Checkpoint(state, "paddle", ck.config, record=ck.record), tmp_path / "perturbed.pdparams")
    result = run("verify", str(folder), str(tmp_path / "perturbed.pdparams"), "--device", "cpu", "--report-dir",
                 str(tmp_path / "reports"))
    assert result.exit_code == 1, result.output
    assert "first module beyond its bound: vision_model.head.layernorm" in result.output
    report = parity.verify(folder, tmp_path / "perturbed.pdparams", device="cpu", photos=False)
    assert not report.passed and report.layers.first_divergence == "vision_model.head.layernorm"
    assert not report.differences["image_features"].passed and report.differences["text_features"].passed
    compared = {row["module"] for row in report.layers.table}
    assert {"text_model.encoder.layers.2", "vision_model.encoder.layers.0", "vision_model.head.attention"} <= compared


@pytest.mark.parametrize("fmt", ["paddle-inference", "onnx"])
def test_both_towers_export_and_pass_verify_export(folder, tmp_path, fmt):
    report = parity.export(folder, fmt, tmp_path / fmt)
    assert report.passed and report.towers == ["image", "text"]
    manifest = json.loads((tmp_path / fmt / "manifest.json").read_text())
    ck = parity.load(folder)
    assert manifest["logits"] == "sigmoid"
    assert manifest["logit_bias"] == pytest.approx(float(ck.state_dict["logit_bias"][0]))
    assert manifest["logit_scale"] == pytest.approx(math.exp(float(ck.state_dict["logit_scale"][0])))
    preprocess = json.loads((tmp_path / fmt / "preprocess.json").read_text())
    assert (preprocess["mean"], preprocess["resize"], preprocess["center_crop"]) == ([0.5] * 3, [36, 36], None)
    assert (tmp_path / fmt / "spiece.model").read_bytes() == (folder / "spiece.model").read_bytes()
    result = run("verify-export", str(tmp_path / fmt), str(folder))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("cls, tower", [("SiglipVisionModel", "image"), ("SiglipTextModel", "text")])
def test_towers_alone(folder, tmp_path, cls, tower):
    import torch

    parity.convert(folder, "hf", tmp_path / cls, tower=tower)
    alone = parity.load(tmp_path / cls)
    assert alone.config.towers == (tower,) and alone.config.embed_dim == (48 if tower == "text" else None)
    theirs = oracle(tmp_path / cls, cls)  # transformers' own class loads it strictly
    image, ids = siglip_inputs(36, 128)
    x = image if tower == "image" else ids
    with torch.no_grad():
        out = theirs(**({"pixel_values": torch.from_numpy(x)} if tower == "image" else {"input_ids": torch.from_numpy(x)}))
    mine = parity.load_model(tmp_path / cls, device="cpu")
    with torch.no_grad():
        states = mine.states(tower, torch.from_numpy(x))
    assert np.abs(states["last_hidden_state"].numpy() - out.last_hidden_state.numpy()).max() <= TORCH_BOUND
    assert np.abs(states["pooled"].numpy() - out.pooler_output.numpy()).max() <= TORCH_BOUND
    parity.convert(tmp_path / cls, "paddle", tmp_path / f"{tower}.pdparams")
    report = parity.verify(tmp_path / cls, tmp_path / f"{tower}.pdparams", device="cpu", photos=False)
    assert report.passed and set(report.differences) >= {"last_hidden_state", "penultimate_hidden_state", "pooled"}
    if tower == "image":  # SigLIP's image tower has no projection beyond its MAP head
        refused(run("convert", str(folder), "--to", "hf", "-o", str(tmp_path / "x"), "--tower", "image",
                    "--with-projection"), "no projection to keep", "MAP head")


def test_layouts_without_siglip_refuse_it(folder, tmp_path):
    for target in ("openai", "paddlenlp", "passl", "paddleclip"):
        refused(run("convert", str(folder), "--to", target, "-o", str(tmp_path / target)), "not SigLIP's text tower")
    # open_clip holds SigLIP by a timm trunk's name, and timm has none of these sizes
    refused(run("convert", str(folder), "--to", "open_clip", "-o", str(tmp_path / "oc")), "timm")
    assert not any(p.name != "hf" for p in tmp_path.iterdir())


def test_naflex_and_headless_configs_are_refused_in_one_line(folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    state = load_file(folder / "model.safetensors")
    key = "vision_model.embeddings.patch_embedding.weight"
    state[key] = state[key].reshape(48, -1)  # Siglip2Model's Linear patch embedding over flattened patches
    save_file(state, tmp_path / "naflex.safetensors")
    refused(run("info", str(tmp_path / "naflex.safetensors")), "NaFlex")
    from parity.config import siglip

    with pytest.raises(parity.ParityError, match="NaFlex"):
        siglip.config_from_json({"model_type": "siglip2"})
    with pytest.raises(parity.ParityError, match="vision_use_head"):
        siglip.config_from_json({"model_type": "siglip_vision_model", "vision_use_head": False})
    with pytest.raises(parity.ParityError, match="hidden_act"):
        siglip.config_from_json({"model_type": "siglip", "text_config": {"hidden_act": "gelu_new"}})


def test_so400m_on_the_meta_device():
    """The registry's so400m at 384 pixels against transformers' SiglipModel from the same config, built
    on the meta device: the same keys and shapes through the hf rows, the same parameter count."""
    import torch
    import transformers

    warnings.simplefilter("ignore")
    config = registry.get("siglip-so400m-patch14-384").config
    hf = parity.layouts.hf.config_to_json(config)
    with torch.device("meta"):
        theirs = transformers.SiglipModel(transformers.SiglipConfig(**{k: v for k, v in hf.items() if k.endswith("_config")}))
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    hub = layouts.HUB.shapes(config)
    assert layouts.get("hf").rows_for(config).layout_shapes(hub) == expected
    count = sum(math.prod(s) for s in hub.values())
    assert count == sum(p.numel() for p in theirs.parameters())
    print(f"so400m-patch14-384: {count:,} parameters")
    assert hub["vision_model.embeddings.position_embedding.weight"] == (729, 1152)  # 27 x 27: 384 // 14
    from parity.models.torch_clip import CLIP  # parity's model builds on the meta device too
    with torch.device("meta"):
        mine = CLIP(config)
    assert {k: tuple(v.shape) for k, v in mine.state_dict().items()} == hub
