"""Where the config comes from, end to end: refused without one, the head-count repro, config files of the
Hugging Face and PaddleNLP layouts, and bad input for every new reader."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

import parity
from parity import layouts
from parity.config.schema import Config, TextConfig, VisionConfig
from parity.harness.gate import run_torch
from parity.harness.inputs import canonical_inputs, sample_set
from parity.testing.official import official_clip
from parity.testing.synthetic import release_archive
from conftest import config_of
from helpers import refused, run


# the repro: openai's CLIP with text width 128 and 4 heads, where width/64 would say 2
HEADS4 = Config(32, VisionConfig("vit", 1, 64, 32, 16, 256, 1, "quick_gelu", 1e-5),
                TextConfig(128, 1, 512, 77, 49408, 4, "quick_gelu", 1e-5))


@pytest.fixture(scope="module")
def heads4(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads4")
    torch.manual_seed(0)
    model = official_clip(HEADS4).eval()
    with torch.no_grad():  # a trained-like logit scale, and weights large enough that attention matters
        model.logit_scale.fill_(np.log(100))
        for p in model.transformer.parameters():
            p.mul_(4)
    torch.save(model.state_dict(), folder / "heads4.pt")
    (folder / "heads4.json").write_text(json.dumps(HEADS4.to_dict()))
    two = replace(HEADS4, text=replace(HEADS4.text, heads=2))
    (folder / "heads2.json").write_text(json.dumps(two.to_dict()))
    return folder, model


def test_an_unregistered_shape_is_refused_for_compute_naming_config(heads4):
    folder, _ = heads4
    for args in (["logits", folder / "heads4.pt", "--framework", "torch"],
                 ["verify", folder / "heads4.pt", "--report-dir", folder / "r"]):
        refused(run(*args), "the config is unknown (vision.heads", "text.heads", "--config")
    assert not (folder / "r").exists()


def test_convert_needs_no_config_and_says_so(heads4, tmp_path):
    folder, _ = heads4
    result = run("convert", folder / "heads4.pt", "--to", "paddle", "-o", tmp_path / "x.pdparams")
    assert result.exit_code == 0 and "the config is unknown" in result.output and "unregistered CLIP" in result.output


def test_the_head_count_repro_given_its_config_gives_the_official_logits(heads4):
    folder, official = heads4
    shots = sample_set(32)
    with torch.no_grad():
        want = official(torch.from_numpy(shots.images), torch.from_numpy(shots.tokens))[0].numpy()
    got = {}
    for name in ("heads4", "heads2"):
        model = parity.load_model(folder / "heads4.pt", "torch", device="cpu", config=folder / f"{name}.json")
        got[name] = run_torch(model, shots.images, shots.tokens).logits
    np.testing.assert_allclose(got["heads4"], want, rtol=0, atol=1e-6)
    assert np.abs(got["heads2"] - want).max() > 1e-2  # the width/64 guess computes another function
    result = run("logits", folder / "heads4.pt", "--framework", "paddle", "--config", folder / "heads4.json", "--json")
    assert result.exit_code == 0, result.output
    image, text = canonical_inputs(32)
    with torch.no_grad():
        canonical = official(torch.from_numpy(image), torch.from_numpy(text))[0].item()
    assert json.loads(result.output)["logit"] == pytest.approx(canonical, abs=1e-4)


def test_a_config_that_contradicts_the_shapes_is_refused_naming_the_field(heads4, tmp_path):
    folder, _ = heads4
    wrong = replace(HEADS4, text=replace(HEADS4.text, mlp_width=1024))
    (tmp_path / "wrong.json").write_text(json.dumps(wrong.to_dict()))
    refused(run("logits", folder / "heads4.pt", "--framework", "torch", "--config", tmp_path / "wrong.json"),
            "text.mlp_width 1024", "tensors say 512")
    refused(run("logits", folder / "heads4.pt", "--framework", "torch", "--config", "ViT-B/32"), "embed_dim")
    (tmp_path / "bad.json").write_text('{"embed_dim": 32}')
    refused(run("info", folder / "heads4.pt", "--config", tmp_path / "bad.json"), "not a parity config")


# ---------------------------------------------------------------- config.json of the folder layouts
CUSTOM = Config(48, VisionConfig("vit", 2, 64, 32, 16, 200, 2, "gelu", 1e-6),
                TextConfig(96, 2, 300, 16, 1000, 3, "quick_gelu", 1e-6))


def test_hf_config_json_round_trips_through_transformers():
    from transformers import CLIPConfig
    data = layouts.hf.config_to_json(CUSTOM)
    library = CLIPConfig(**data)
    v, t = library.vision_config, library.text_config
    assert (v.num_attention_heads, v.hidden_act, v.layer_norm_eps, library.projection_dim) == (2, "gelu", 1e-6, 48)
    assert (t.num_attention_heads, t.hidden_act, t.layer_norm_eps, t.intermediate_size) == (3, "quick_gelu", 1e-6, 300)
    assert layouts.hf.config_from_json(library.to_dict()) == CUSTOM


def test_paddlenlp_config_json_round_trips_through_paddlenlp():
    warnings.simplefilter("ignore")
    from paddlenlp.transformers import CLIPConfig
    for config in (replace(CUSTOM, vision=replace(CUSTOM.vision, eps=1e-5), text=replace(CUSTOM.text, eps=1e-5)),
                   config_of("RN50")):
        library = CLIPConfig(**layouts.paddlenlp.config_to_json(config))
        assert layouts.paddlenlp.config_from_json(library.to_dict()) == config
    with pytest.raises(parity.ConfigError, match="eps 1e-05, whatever its config says"):
        layouts.paddlenlp.config_to_json(CUSTOM)  # PaddleNLP's model cannot compute eps 1e-6


def test_hf_processor_loads_offline_and_tokenizes_as_parity(tmp_path):
    warnings.simplefilter("ignore")
    from transformers import CLIPProcessor
    parity.convert(release_archive("ViT-B/32"), "hf", tmp_path / "hf")
    processor = CLIPProcessor.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    texts = [*sample_set(224).captions, "A photo of a dog.", "two cats,  sleeping on a sofa!", "Ünïcödé café",
             "numbers 1234 and 5.6", "don't stop", "a" * 40]
    mine = parity.tokenize(texts)
    for text, row in zip(texts, mine):  # the text's ids exactly; padding is each library's own (see tokenizer.py)
        assert processor(text=text)["input_ids"] == row[:list(row).index(49407) + 1].tolist(), text
    padded = processor(text=texts, padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    assert padded.shape == mine.shape and np.array_equal(np.where(mine == 0, 49407, mine), padded)


def test_a_sharded_hf_folder_is_read_and_a_missing_shard_refused(tmp_path):
    warnings.simplefilter("ignore")
    from transformers import CLIPModel
    from transformers import CLIPConfig as HFConfig
    model = CLIPModel(HFConfig(**layouts.hf.config_to_json(CUSTOM)))
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ck = parity.load(tmp_path / "sharded")
    assert ck.layout == "hf" and ck.config == CUSTOM and ck.config_source == "config.json"
    native = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(ck.state_dict) == sorted(native)
    assert all(np.array_equal(ck.state_dict[k], v) for k, v in native.items())
    shards[1].unlink()
    refused(run("info", tmp_path / "sharded"), f"shard {shards[1].name} is missing")


# ---------------------------------------------------------------- bad input for the new readers
def test_a_folder_without_config_json(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.safetensors").write_bytes(b"")
    refused(run("info", tmp_path / "folder"), "without config.json")


def test_a_config_json_that_contradicts_the_tensors(tmp_path):
    parity.convert(release_archive("ViT-B/32"), "hf", tmp_path / "hf")
    data = json.loads((tmp_path / "hf" / "config.json").read_text())
    data["text_config"]["intermediate_size"] = 1000
    (tmp_path / "hf" / "config.json").write_text(json.dumps(data))
    refused(run("info", tmp_path / "hf"), "text.mlp_width 1000", "tensors say 2048")


def test_a_passl_resnet_is_refused_saying_why(tmp_path):
    """A ResNet saved by PASSL itself: its attention pool's positional embedding is not in the state dict."""
    import sys
    from pathlib import Path
    from parity.models.frameworks import import_paddle
    paddle = import_paddle()
    sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
    import paddle_fluid
    paddle_fluid.install()
    from passl.modeling.architectures import CLIPWrapper
    arch = {"name": "CLIP", "embed_dim": 16, "image_resolution": 64, "vision_layers": (1, 1, 1, 1),
            "vision_width": 8, "vision_patch_size": None, "context_length": 16, "vocab_size": 100,
            "transformer_width": 64, "transformer_heads": 1, "transformer_layers": 1, "qkv_bias": True}
    model = CLIPWrapper(architecture=arch, head={"name": "CLIPHead"})
    assert not any("attnpool.positional" in k for k in model.state_dict())
    paddle.save({"state_dict": model.state_dict()}, str(tmp_path / "passl-rn.pdparams"))
    refused(run("info", tmp_path / "passl-rn.pdparams"), "a ResNet in the passl layout", "positional embedding")


def test_asking_for_an_hf_resnet(tmp_path):
    refused(run("convert", release_archive("RN50"), "--to", "hf", "-o", tmp_path / "rn50-hf"),
            "holds vit image towers, not a resnet")
    assert not (tmp_path / "rn50-hf").exists()
