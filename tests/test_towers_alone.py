"""Towers alone: the CLIP text encoders of diffusion pipelines and the CLIP vision towers of VLMs, in
transformers' and PaddleNLP's four classes each, held to those libraries (the oracles) on the hidden
states their users consume, in both directions; split from a whole CLIP; in pipeline folders.

Tiny non-default configs: 64-wide towers with 32-wide heads, 3 layers, GELU on the text tower and
QuickGELU on the image tower, MLPs of 96 and 128, projections 48 wide, images of 32 pixels.
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
from parity.harness.gate import TOWER_OUTPUTS
from parity.io.save import same_bits
from parity.models.frameworks import import_paddle
from helpers import listing, refused, run

LIBRARY_BOUND = (1e-5, 1e-5)  # atol, rtol: the two libraries on the same tensors
PARITY_BOUND = 1e-4  # parity's models against a library
CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection")
TEXT = dict(hidden_size=64, intermediate_size=96, num_attention_heads=2, num_hidden_layers=3, projection_dim=48,
            hidden_act="gelu")
VISION = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=3, projection_dim=48,
              image_size=32, patch_size=8, hidden_act="quick_gelu")


def _tower(cls: str) -> str:
    return "text" if "Text" in cls else "image"


def canonical(cls: str) -> np.ndarray:
    """The canonical input: text ids ones (1, 77), an image ones/2."""
    return np.ones((1, 77), np.int64) if _tower(cls) == "text" else np.full((1, 3, 32, 32), 0.5, np.float32)


def hf_model(cls: str, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = (transformers.CLIPTextConfig(**TEXT) if _tower(cls) == "text" else transformers.CLIPVisionConfig(**VISION))
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():  # LayerNorms away from their init (1, 0), so that a swapped gain or bias shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_outputs(model, cls: str) -> dict:
    import torch

    inputs = {"input_ids" if _tower(cls) == "text" else "pixel_values": torch.from_numpy(canonical(cls))}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        got = {"last_hidden_state": out.last_hidden_state, "penultimate_hidden_state": out.hidden_states[-2]}
        embeds = getattr(out, "text_embeds", None) if _tower(cls) == "text" else getattr(out, "image_embeds", None)
        if embeds is None:
            got["pooled"] = out.pooler_output
        else:  # the WithProjection classes give no pooled output: their inner transformer's is it
            got["pooled"] = (model.text_model if _tower(cls) == "text" else model.vision_model)(**inputs).pooler_output
            got["embeds"] = embeds
    return {k: v.detach().double().numpy() for k, v in got.items()}


def paddlenlp_load(folder: Path, cls: str):
    import paddlenlp.transformers as library

    paddle = import_paddle()
    config_class = library.CLIPTextConfig if _tower(cls) == "text" else library.CLIPVisionConfig
    model = getattr(library, cls)(config_class.from_pretrained(str(folder)))
    missing, unexpected = model.set_state_dict(paddle.load(str(folder / "model_state.pdparams")))
    assert missing == [] and unexpected == [], (missing, unexpected)
    getattr(library, cls).from_pretrained(str(folder))  # its own loader takes the folder too
    return model.eval()


def paddlenlp_outputs(model, cls: str) -> dict:
    paddle = import_paddle()
    inputs = {"input_ids" if _tower(cls) == "text" else "pixel_values": paddle.to_tensor(canonical(cls))}
    with paddle.no_grad():
        out = model(**inputs, output_hidden_states=True, return_dict=True)
        pooled = (model.text_model if _tower(cls) == "text" else model.vision_model)(**inputs, return_dict=True)
    got = {"last_hidden_state": out.last_hidden_state, "penultimate_hidden_state": out.hidden_states[-2],
           "pooled": pooled.pooler_output}
    embeds = getattr(out, "text_embeds", None) if _tower(cls) == "text" else getattr(out, "image_embeds", None)
    if embeds is not None:
        got["embeds"] = embeds
    return {k: v.numpy().astype(np.float64) for k, v in got.items()}


def parity_outputs(path: Path, framework: str) -> dict:
    out = parity.logits(path, framework, device="cpu")
    return {k: np.asarray(out[k], np.float64) for k in TOWER_OUTPUTS if k in out}


def assert_close(got: dict, want: dict, atol: float, rtol: float, what: str):
    assert sorted(got) == sorted(want), (what, sorted(got), sorted(want))
    for name, b in want.items():
        a = got[name]
        assert a.shape == b.shape, (what, name, a.shape, b.shape)
        excess = np.abs(a - b) - (atol + rtol * np.abs(b))
        assert excess.max() <= 0, (what, name, float(np.abs(a - b).max()))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Each class made by transformers and saved, its outputs, and the same by PaddleNLP (its own init)."""
    warnings.simplefilter("ignore")
    root = tmp_path_factory.mktemp("towers")
    out = {}
    for cls in CLASSES:
        model = hf_model(cls)
        model.save_pretrained(str(root / f"hf-{cls}"))
        out[cls] = {"hf": root / f"hf-{cls}", "hf_outputs": hf_outputs(model, cls)}
    return root, out


@pytest.mark.parametrize("cls", CLASSES)
def test_transformers_towers_convert_to_paddlenlp_and_compute_the_same(made, cls):
    root, made = made
    folder, want = made[cls]["hf"], made[cls]["hf_outputs"]
    ck = parity.load(folder)
    assert ck.layout == "hf" and ck.config.towers == (_tower(cls),)
    assert (ck.config.embed_dim is not None) == cls.endswith("WithProjection")
    paddle_folder = root / f"pn-{cls}"
    parity.convert(folder, "paddlenlp", paddle_folder)
    written = json.loads((paddle_folder / "config.json").read_text())
    assert written["architectures"] == [cls] and written["model_type"] == ("clip_text_model" if _tower(cls) == "text"
                                                                           else "clip_vision_model")
    net = paddlenlp_load(paddle_folder, cls)
    assert_close(paddlenlp_outputs(net, cls), want, *LIBRARY_BOUND, f"PaddleNLP {cls}")
    for path, framework in ((folder, "torch"), (folder, "paddle"), (paddle_folder, "paddle")):
        assert_close(parity_outputs(path, framework), want, PARITY_BOUND, 0.0, f"parity {framework} on {path.name}")
    # and back to transformers' layout, bit for bit
    parity.convert(paddle_folder, "hf", root / f"back-{cls}")
    back, again = parity.load(root / f"back-{cls}").state_dict, ck.state_dict
    assert sorted(back) == sorted(again) and all(same_bits(back[k], again[k]) for k in again)


@pytest.mark.parametrize("cls", CLASSES)
def test_paddlenlp_towers_convert_to_transformers_and_compute_the_same(made, cls):
    import paddlenlp.transformers as library
    import transformers

    warnings.simplefilter("ignore")
    root, _ = made
    paddle = import_paddle()
    paddle.seed(1)
    if _tower(cls) == "text":
        config = library.CLIPTextConfig(**TEXT)
    else:
        config = library.CLIPVisionConfig(**VISION)
    net = getattr(library, cls)(config).eval()
    with paddle.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name or "ln_" in name:
                p.set_value(p + paddle.randn(p.shape) * 0.1)
    folder = root / f"pn-made-{cls}"
    net.save_pretrained(str(folder))
    want = paddlenlp_outputs(net, cls)
    ck = parity.load(folder)
    assert ck.layout == "paddlenlp" and ck.config.towers == (_tower(cls),)
    parity.convert(folder, "hf", root / f"hf-made-{cls}")
    model, info = getattr(transformers, cls).from_pretrained(str(root / f"hf-made-{cls}"), output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
    assert_close(hf_outputs(model.eval(), cls), want, *LIBRARY_BOUND, f"transformers {cls}")
    for framework in ("torch", "paddle"):
        assert_close(parity_outputs(folder, framework), want, PARITY_BOUND, 0.0, f"parity {framework} on {cls}")


@pytest.mark.parametrize("cls", CLASSES)
def test_verify_compares_every_output_users_consume(made, cls, tmp_path):
    _, made = made
    report = parity.verify(made[cls]["hf"], device="cpu", photos=_tower(cls) == "text")
    assert report.passed, report.differences
    names = ["last_hidden_state", "penultimate_hidden_state", "pooled"] + (["embeds"] if "With" in cls else [])
    assert list(report.differences) == names and report.gated == names
    assert report.inputs["towers"] == [_tower(cls)] and report.torch_logit is None
    # the noise floor is measured for each: the gate is honest for every one
    assert all(report.noise_floor[name] > 0 for name in names)


def test_a_whole_clip_split_is_transformers_tower_with_projection(made, tmp_path):
    import torch
    import transformers

    warnings.simplefilter("ignore")
    torch.manual_seed(2)
    whole = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                           projection_dim=48)).eval()
    whole.save_pretrained(str(tmp_path / "clip"))
    for cls, tower in (("CLIPTextModelWithProjection", "text"), ("CLIPVisionModelWithProjection", "image")):
        parity.convert(tmp_path / "clip", "hf", tmp_path / cls, tower=tower, projection=True)
        split = getattr(transformers, cls).from_pretrained(str(tmp_path / cls)).eval()
        # transformers' own class built from the same weights
        config = whole.config.text_config if tower == "text" else whole.config.vision_config
        config.projection_dim = 48
        own = getattr(transformers, cls)(config).eval()
        inner, projection = ("text_model", "text_projection") if tower == "text" else ("vision_model", "visual_projection")
        getattr(own, inner).load_state_dict(getattr(whole, inner).state_dict(), strict=True)
        getattr(own, projection).load_state_dict(getattr(whole, projection).state_dict(), strict=True)
        # the same tensors, bit for bit, and so the same outputs (to the last bit where the GEMM takes the same
        # path: a safetensors file's tensors sit at other alignments than in memory, 2e-7 apart on 48 values)
        mine, theirs = split.state_dict(), own.state_dict()
        assert sorted(mine) == sorted(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs), cls
        assert_close(hf_outputs(split, cls), hf_outputs(own, cls), 1e-6, 0.0, cls)
    # without --with-projection: the bare class
    parity.convert(tmp_path / "clip", "paddlenlp", tmp_path / "bare", tower="text")
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]


def test_a_tower_taken_out_and_converted_back_is_bit_exact(tmp_path):
    from parity.testing.synthetic import release_archive

    whole = parity.load(release_archive("ViT-B/32"))
    for tower, keep in (("text", True), ("image", False)):
        parity.convert(release_archive("ViT-B/32"), "openai", tmp_path / f"{tower}.pt", tower=tower, projection=keep)
        alone = parity.load(tmp_path / f"{tower}.pt")
        assert alone.config == whole.config.only(tower, keep) and alone.layout == "openai"
        assert alone.name is None or alone.name in registry.ENTRIES
        parity.convert(tmp_path / f"{tower}.pt", "paddle", tmp_path / f"{tower}.pdparams")
        parity.convert(tmp_path / f"{tower}.pdparams", "torch", tmp_path / f"{tower}-back.pt")
        back = parity.load(tmp_path / f"{tower}-back.pt").state_dict
        want = {k: v for k, v in whole.state_dict.items() if k in layouts.HUB.shapes(alone.config)}
        assert sorted(back) == sorted(want) and all(same_bits(back[k], want[k]) for k in want), tower
        assert ("text_projection" in back) == keep and "logit_scale" not in back


def _pipeline(root: Path, made: dict) -> Path:
    import shutil

    pipe = root / "sdxl"
    pipe.mkdir()
    shutil.copytree(made["CLIPTextModel"]["hf"], pipe / "text_encoder")
    shutil.copytree(made["CLIPTextModelWithProjection"]["hf"], pipe / "text_encoder_2")
    (pipe / "unet").mkdir()
    (pipe / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not parity's to read" * 100)
    (pipe / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None], "unet": ["diffusers", "UNet2DConditionModel"]}))
    return pipe


def test_a_pipeline_folder_converts_its_encoders_and_skips_the_rest(made, tmp_path):
    _, made = made
    pipe = _pipeline(tmp_path, made)
    before = listing(pipe)
    result = run("convert", str(pipe), "--to", "paddlenlp", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["text_encoder", "text_encoder_2"]
    assert "skipped (not CLIP; --copy-rest copies them): unet, model_index.json" in result.output
    for name, cls in (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")):
        net = paddlenlp_load(tmp_path / "out" / name, cls)
        assert_close(paddlenlp_outputs(net, cls), made[cls]["hf_outputs"], *LIBRARY_BOUND, name)
    assert listing(pipe) == before  # the input untouched
    # with --copy-rest, the rest as it is, and the index naming PaddleNLP's classes for the towers
    result = run("convert", str(pipe), "--to", "paddlenlp", "-o", str(tmp_path / "all"), "--copy-rest")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "all" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (pipe / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    index = json.loads((tmp_path / "all" / "model_index.json").read_text())
    assert index["text_encoder_2"] == ["paddlenlp.transformers", "CLIPTextModelWithProjection"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    # info lists the CLIP subfolders with their configs
    info = run("info", str(pipe), "--json")
    assert info.exit_code == 0, info.output
    fields = json.loads(info.output)
    assert sorted(fields["clip"]) == ["text_encoder", "text_encoder_2"] and sorted(fields["other"]) == ["tokenizer", "unet"]
    assert "projection 48" in fields["clip"]["text_encoder_2"]["config"]
    # an output that exists is refused, and nothing is written
    refused(run("convert", str(pipe), "--to", "paddlenlp", "-o", str(tmp_path / "out")), "already exists")


def test_a_scaled_middle_layernorm_fails_verify_and_is_named(made, tmp_path):
    _, made = made
    folder = made["CLIPTextModelWithProjection"]["hf"]
    parity.convert(folder, "paddle", tmp_path / "text.pdparams")
    ck = parity.load(tmp_path / "text.pdparams")
    state = dict(ck.state_dict)
    state["transformer.resblocks.1.ln_2.weight"] = state["transformer.resblocks.1.ln_2.weight"] * np.float32(1.05)
    parity.save(parity.Checkpoint(state, "paddle", ck.config, record=ck.record),
                tmp_path / "scaled.pdparams")
    result = run("verify", str(folder), str(tmp_path / "scaled.pdparams"), "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "r" / "custom.json").read_text())
    assert report["layers"]["first_divergence"] == "transformer.resblocks.1.ln_2", report["layers"]["first_divergence"]
    assert not report["differences"]["penultimate_hidden_state"]["passed"]
    assert "first module beyond its bound: transformer.resblocks.1.ln_2" in result.output


def test_the_cli_prints_hidden_states_gates_on_chosen_outputs_and_refuses_the_other_tower(made, tmp_path):
    _, made = made
    folder = made["CLIPVisionModelWithProjection"]["hf"]
    out = run("logits", str(folder), "--framework", "paddle", "--json")
    assert out.exit_code == 0, out.output
    values = json.loads(out.output)
    assert np.asarray(values["last_hidden_state"]).shape == (1, 17, 64)  # 4x4 patches and the class token
    assert np.asarray(values["penultimate_hidden_state"]).shape == (1, 17, 64)
    assert np.asarray(values["pooled"]).shape == (1, 64) and np.asarray(values["embeds"]).shape == (1, 48)
    good = run("verify", str(folder), "--outputs", "penultimate_hidden_state,embeds", "--report-dir", str(tmp_path))
    assert good.exit_code == 0 and "gated on penultimate_hidden_state, embeds" in good.output, good.output
    refused(run("verify", str(folder), "--outputs", "logits", "--report-dir", str(tmp_path)), "cannot gate on logits")
    refused(run("logits", str(folder), "--framework", "torch", "--tower", "text"),
            "this model is an image tower alone: it has no text tower")
    refused(run("convert", str(folder), "--to", "paddle", "--with-projection"), "--with-projection goes with it")
    refused(run("convert", str(made["CLIPTextModel"]["hf"]), "--to", "openai", "--tower", "text",
                "--with-projection", "-o", str(tmp_path / "x.pt")), "has no projection to keep")
    refused(run("convert", str(folder), "--to", "passl", "-o", str(tmp_path / "x.pdparams")),
            "the passl layout holds whole CLIPs, not an image tower alone")
    refused(run("export", str(folder), "--to", "onnx", "-o", str(tmp_path / "onnx")), "parity exports whole CLIPs")
    assert not (tmp_path / "onnx").exists()


def test_registered_towers_have_their_true_configs():
    bigg = registry.get("sdxl/text_encoder_2").config
    assert bigg.towers == ("text",) and bigg.embed_dim == 1280
    sd2 = registry.get("sd2/text_encoder").config
    assert sd2.text.layers == 23 and sd2.text.activation == "gelu"  # 23 of ViT-H's 24 layers: never padded
    hf_keys = layouts.hf.KEYMAP.layout_shapes(layouts.HUB.shapes(sd2))
    assert layouts.HUB.infer(layouts.hf.KEYMAP.hub_shapes(hf_keys)) == sd2.shapes()
    assert max(int(k.split(".")[3]) for k in hf_keys if ".layers." in k) == 22
    llava = registry.get("llava/vision_tower").config
    assert llava.towers == ("image",) and llava.embed_dim is None and llava.vision.image_size == 336
    assert registry.get("sd1/text_encoder").config.text.activation == "quick_gelu"


def test_the_bigg_text_tower_on_the_meta_device():
    """SDXL's text_encoder_2: parity's torch model and transformers' CLIPTextModelWithProjection on the
    meta device have the same keys, shapes and parameter count (694,659,840)."""
    import torch
    import transformers
    from parity.models.torch_clip import CLIP

    config = registry.get("sdxl/text_encoder_2").config
    with torch.device("meta"):
        ours = CLIP(config)
        theirs = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            projection_dim=1280, hidden_act="gelu"))
    hub = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert hub == layouts.HUB.shapes(config)
    assert layouts.hf.KEYMAP.layout_shapes(hub) == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    count = sum(math.prod(s) for s in hub.values())
    assert count == sum(p.numel() for p in theirs.parameters()) == 694_659_840


def test_a_tower_alone_is_refused_where_its_layout_has_no_place_and_configs_say_why():
    text = registry.get("sd1/text_encoder").config
    assert layouts.get("open_clip").refuses(text).startswith("the open_clip layout holds whole CLIPs")
    assert layouts.get("paddlenlp").refuses(text) is None and layouts.get("openai").refuses(text) is None
    assert Config.from_dict(text.to_dict()) == text
    rn50 = registry.get("RN50").config
    with pytest.raises(parity.errors.ConfigError, match="a ResNet tower alone"):
        Config(1024, rn50.vision, None).validate()


def test_hostile_pipeline_folders_get_one_line_and_nothing_is_written(made, tmp_path):
    import os

    _, made = made
    pipe = _pipeline(tmp_path, made)
    index = (pipe / "model_index.json").read_text()
    cases = {
        "not JSON": ("{not json", "model_index.json"),
        "an entry that is not [library, class]": (json.dumps({"text_encoder": "CLIPTextModel"}), "not [library, class]"),
        "a component outside the folder": (json.dumps({"../text_encoder": ["transformers", "CLIPTextModel"]}),
                                           "not a subfolder name"),
        "no CLIP tower": (json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}), "names no CLIP tower"),
    }
    for what, (text, needle) in cases.items():
        (pipe / "model_index.json").write_text(text)
        refused(run("convert", str(pipe), "--to", "paddlenlp", "-o", str(tmp_path / "out")), needle)
        assert not (tmp_path / "out").exists(), what
    (pipe / "model_index.json").write_text(index)
    refused(run("convert", str(pipe), "--to", "paddle", "-o", str(tmp_path / "out")), "hf or paddlenlp folders")
    refused(run("convert", str(pipe), "--to", "paddlenlp", "--tower", "text", "-o", str(tmp_path / "out")),
            "not of a pipeline")
    # a FIFO among the other components is never opened: refused, and no output is left, not even half
    os.mkfifo(pipe / "unet" / "fifo")
    refused(run("convert", str(pipe), "--to", "paddlenlp", "--copy-rest", "-o", str(tmp_path / "out")),
            "not a regular file or folder")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".parity-")]
