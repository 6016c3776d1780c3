"""open_clip's CLIPs against open_clip 3.3.0 itself, the oracle.

Tiny open_clip models with a head width other than 64, an MLP ratio other than 4 and both activations
are saved by open_clip's own hub writer (`save_for_hf`); parity reads the folder by its
open_clip_config.json, its torch model computes what open_clip computes (1e-6) and its Paddle model
too (1e-4), on the canonical pair and on the photographs with their captions. The big configs are built
on the meta device only. open_clip imports torchvision, which this machine cannot import: a test stub
stands in for it (tests/stubs/torchvision_stub.py says why).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import parity
from parity import layouts
from parity.config import registry
from parity.errors import CheckpointError, ConfigMissingError
from parity.harness.gate import run_paddle, run_torch
from parity.harness.inputs import canonical_inputs, sample_set
from parity.layouts import open_clip as oc_layout
from parity.io.save import same_bits

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
import torchvision_stub  # noqa: E402

torchvision_stub.install()
import open_clip  # noqa: E402
import torch  # noqa: E402

# head width 48 and 32 (not 64), MLP ratios 2.5, 4.5, 3 and 2 (not 4), both activations
TINY = {
    "gelu": dict(embed_dim=48, quick_gelu=False,
                 vision_cfg=dict(image_size=32, layers=2, width=96, head_width=48, mlp_ratio=2.5, patch_size=8),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2, mlp_ratio=3.0)),
    "quickgelu": dict(embed_dim=40, quick_gelu=True,
                      vision_cfg=dict(image_size=32, layers=2, width=96, head_width=32, mlp_ratio=4.5, patch_size=16),
                      text_cfg=dict(context_length=77, vocab_size=49408, width=96, heads=4, layers=2, mlp_ratio=2.0)),
}
BIG = ("ViT-H-14", "ViT-g-14", "ViT-bigG-14")


class _NoTokenizerFiles:
    """open_clip's CLIP tokenizer is built in: it has no files for save_for_hf to write beside the model."""

    def save_pretrained(self, _folder):
        pass


def tiny_model(name: str):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY[name]).eval()
    # what open_clip.create_model sets, and save_for_hf writes as preprocess_cfg
    model.visual.image_mean, model.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    with torch.no_grad():  # LayerNorms away from 1 and 0, so that a missed eps or affine shows
        for k, p in model.named_parameters():
            if "ln_" in k:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def saved_folder(name: str, root: Path) -> Path:
    """open_clip's own hub folder: open_clip_config.json, open_clip_model.safetensors and _pytorch_model.bin."""
    from open_clip.push_to_hf_hub import save_for_hf

    folder = root / f"open_clip-{name}"
    if not folder.exists():
        save_for_hf(tiny_model(name), _NoTokenizerFiles(), TINY[name], folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip")
    return {name: saved_folder(name, root) for name in TINY}


def open_clip_outputs(model, image, text):
    with torch.no_grad():
        i, t = torch.from_numpy(image), torch.from_numpy(text)
        image_features, text_features = model.encode_image(i), model.encode_text(t)
        img, txt, scale = model(i, t)  # open_clip's own forward: normalised features and the logit scale
        logits = scale * img @ txt.T
    return {"logits": logits.double().numpy(), "image_features": image_features.double().numpy(),
            "text_features": text_features.double().numpy()}


def pairs(config):
    size = config.vision.image_size
    shots = sample_set(size, config.text.context_length)
    return {"canonical": canonical_inputs(size, config.text.context_length), "photos": (shots.images, shots.tokens)}


@pytest.mark.parametrize("name", TINY)
def test_the_folder_is_read_by_its_open_clip_config(name, folders):
    ck = parity.load(folders[name])
    v, t = ck.config.vision, ck.config.text
    cfg = TINY[name]
    assert ck.layout == "openai" and ck.config_source == "open_clip_config.json"
    assert v.heads == cfg["vision_cfg"]["width"] // cfg["vision_cfg"]["head_width"] and t.heads == cfg["text_cfg"]["heads"]
    assert v.mlp_width == int(cfg["vision_cfg"]["width"] * cfg["vision_cfg"]["mlp_ratio"])
    assert v.activation == t.activation == ("quick_gelu" if cfg["quick_gelu"] else "gelu")
    # the safetensors file is the one read; its tensors are open_clip's state dict, bit for bit
    want = tiny_model(name).state_dict()
    assert sorted(ck.state_dict) == sorted(want)
    assert all(np.array_equal(ck.state_dict[k], want[k].numpy()) for k in want)


@pytest.mark.parametrize("name", TINY)
def test_parity_computes_what_open_clip_computes(name, folders, figures):
    """torch: within 1e-6, or 4x the float32 noise floor where that is larger (parity's gate, measured by
    parity's model in float64 on the same input). open_clip runs torch's batch-first attention (its fused
    fast path), openai/CLIP and parity the sequence-first one: different kernels, which round alike for
    some shapes and not for others (unmasked, 1e-7 apart on random data at every head width). Here the
    QuickGELU model is bit for bit open_clip's; the GELU model's 48-wide image heads differ by less than
    either framework differs from float64. Paddle: within 1e-4."""
    from parity.harness.gate import float64

    model = tiny_model(name)
    ck = parity.load(folders[name])
    inputs = pairs(ck.config)
    want = {k: open_clip_outputs(model, *pair) for k, pair in inputs.items()}
    del model
    for framework, run, bound in (("torch", run_torch, 1e-6), ("paddle", run_paddle, 1e-4)):
        net = parity.load_model(folders[name], framework=framework, device="cpu")
        for k, (image, text) in inputs.items():
            got = run(net, image, text)
            if framework == "torch":
                with float64(net):
                    exact = run_torch(net, image.astype(np.float64), text)
            for output in ("logits", "image_features", "text_features"):
                delta = float(np.abs(got[output] - want[k][output]).max())
                allowed = bound
                if framework == "torch":
                    noise = float(np.abs(got[output] - exact[output]).max())
                    allowed = max(bound, 4 * noise)
                    figures.append(f"open_clip {name:9} {k:9} {output:14} torch |Δ| {delta:.1e} (float32 noise "
                                   f"{noise:.1e})")
                assert delta <= allowed, (framework, k, output, delta, allowed)
        del net


@pytest.mark.parametrize("name", TINY)
def test_verify_passes_tower_by_tower(name, folders, tmp_path):
    report = parity.verify(folders[name], device="cpu")
    assert report.passed and report.torch_logit is not None and report.photos.topk_agreement is not None
    text = parity.verify(folders[name], device="cpu", towers=("text",))
    assert text.passed and text.torch_logit is None and sorted(text.differences) == ["text_features"]
    # the text tower alone computes the same text features as both towers do
    assert text.features["torch"]["text"] == report.features["torch"]["text"]
    assert text.noise_floor["text_features"] == report.noise_floor["text_features"]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("layout", ["paddle", "hf", "paddlenlp"])
def test_converts_to_every_layout_that_holds_it_and_back_bit_exact(name, layout, folders, tmp_path):
    warnings.simplefilter("ignore")
    source = folders[name] / "open_clip_pytorch_model.bin"  # the pickle too, as open_clip wrote it
    suffix = ".pdparams" if layout == "paddle" else ""
    out = tmp_path / f"{layout}{suffix}"
    parity.convert(folders[name], layout, out)
    again = parity.load(out)
    assert again.config == parity.load(folders[name]).config  # heads and activation travel in its config
    parity.convert(out, "openai", tmp_path / "back.safetensors", layout="openai")
    back = parity.load(tmp_path / "back.safetensors").state_dict
    original = parity.load(source, config=folders[name] / "open_clip_config.json").state_dict
    assert sorted(back) == sorted(original)
    assert all(same_bits(back[k], original[k]) for k in original)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("layout,bound", [("hf", 1e-5), ("paddlenlp", 1e-4)])
def test_transformers_and_paddlenlp_compute_what_open_clip_computes(name, layout, bound, folders, tmp_path):
    from test_oracles import LIBRARIES  # each library's strict loader and its outputs

    warnings.simplefilter("ignore")
    model = tiny_model(name)
    config = parity.load(folders[name]).config
    inputs = pairs(config)
    want = {k: open_clip_outputs(model, *pair) for k, pair in inputs.items()}
    del model
    parity.convert(folders[name], layout, tmp_path / layout)
    library = LIBRARIES[layout]
    net = library.load(tmp_path / layout, config)
    for k, pair in inputs.items():
        got = library.outputs(net, *pair)
        for output in ("logits", "image_features", "text_features"):
            delta = float(np.abs(got[output] - want[k][output]).max())
            assert delta <= bound, (layout, k, output, delta)


@pytest.mark.parametrize("name", [e.name for e in registry.family("open_clip")])
def test_registry_entries_are_open_clips_own_configs(name):
    cfg = open_clip.get_model_config(name)
    assert registry.get(name).config == oc_layout.config_from_model_cfg(cfg)


@pytest.mark.parametrize("name", BIG)
def test_big_models_on_the_meta_device_have_parity_keys_shapes_and_counts(name):
    from parity.models.torch_clip import CLIP

    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config(name))
        ours = CLIP(registry.get(name).config)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config = registry.get(name).config
    assert theirs == layouts.HUB.shapes(config)
    assert sum(p.numel() for p in model.parameters()) == sum(int(np.prod(s)) for s in theirs.values())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    heads = {m.num_heads for m in model.visual.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    assert heads == {config.vision.heads} == {16}


def test_a_b32_state_dict_without_a_config_is_refused_for_compute(tmp_path):
    from click.testing import CliRunner

    from parity.cli import main
    from parity.testing.synthetic import cached_state_dict
    from parity.io.formats import torch_zip

    path = tmp_path / "b32.pt"
    state = {k: v.numpy() for k, v in cached_state_dict("ViT-B/32").items()}
    with open(path, "wb") as f:
        torch_zip.write(f, state)
    ck = parity.load(path)
    assert not ck.config.complete and ck.config_source.startswith("ambiguous")
    with pytest.raises(ConfigMissingError, match="ambiguous: its shapes fit ViT-B/32 \\(quick_gelu\\), ViT-B-32 "
                                                 "\\(gelu\\)"):
        ck.require_config()
    info = CliRunner().invoke(main, ["info", str(path)]).output
    assert "registered shapes, ambiguous config" in info and "ambiguous: the shapes fit ViT-B/32" in info
    result = CliRunner().invoke(main, ["logits", str(path), "--framework", "torch"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--config" in lines[0] and "ambiguous" in lines[0], result.output
    # converting needs no config, and says so
    assert CliRunner().invoke(main, ["convert", str(path), "--to", "paddle", "-o", str(tmp_path / "b.pdparams")]
                              ).exit_code == 0
    # given, it computes; both names are accepted, and they differ
    gelu = CliRunner().invoke(main, ["logits", str(path), "--framework", "torch", "--config", "ViT-B-32", "--json"])
    quick = CliRunner().invoke(main, ["logits", str(path), "--framework", "torch", "--config", "ViT-B/32", "--json"])
    assert gelu.exit_code == quick.exit_code == 0
    assert json.loads(gelu.output)["logit"] != json.loads(quick.output)["logit"]


def test_models_that_are_not_clip_are_refused_by_their_keys(tmp_path):
    from parity.io.formats import torch_zip

    for extra, needle in (({"ls_init_value": 1e-4}, "LayerScale"), ({"init_logit_bias": -10.0}, "SigLIP")):
        cfg = {**TINY["gelu"], "vision_cfg": {**TINY["gelu"]["vision_cfg"], **extra}} \
            if "ls_init_value" in extra else {**TINY["gelu"], **extra}
        model = open_clip.CLIP(**cfg)
        path = tmp_path / "m.pt"
        with open(path, "wb") as f:
            torch_zip.write(f, {k: v.numpy() for k, v in model.state_dict().items()})
        with pytest.raises(CheckpointError, match=needle):
            parity.load(path)
        path.unlink()


@pytest.mark.parametrize("section,key,value,needle", [
    ("vision_cfg", "ls_init_value", 1e-4, "LayerScale"),
    ("text_cfg", "hf_model_name", "bert-base-uncased", "Hugging Face text tower"),
    ("vision_cfg", "no_ln_pre", True, "CLIPA"),
    (None, "multimodal_cfg", {"width": 512}, "CoCa"),
    ("text_cfg", "pool_type", "last", "pool_type is 'last'"),
    ("vision_cfg", "unheard_of", 1, "vision_cfg.unheard_of: a key parity does not know"),
])
def test_an_open_clip_config_of_another_model_is_refused_naming_the_key(section, key, value, needle):
    cfg = json.loads(json.dumps(TINY["gelu"]))
    (cfg[section] if section else cfg)[key] = value
    with pytest.raises(parity.config.schema.ConfigError, match=needle):
        oc_layout.config_from_model_cfg(cfg)


def test_paddleclip_and_passl_refuse_a_model_their_library_would_compute_otherwise(folders, tmp_path):
    for layout in ("paddleclip", "passl"):
        with pytest.raises(CheckpointError, match="builds every CLIP with QuickGELU, 64-wide heads"):
            parity.convert(folders["gelu"], layout, tmp_path / f"{layout}.pdparams")
        assert not (tmp_path / f"{layout}.pdparams").exists()


def test_an_open_clip_folder_is_written_and_read_back(folders, tmp_path):
    out = tmp_path / "written"
    parity.convert(folders["quickgelu"] / "open_clip_model.safetensors", "open_clip", out,
                   config=str(folders["quickgelu"] / "open_clip_config.json"))
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    data = json.loads((out / "open_clip_config.json").read_text())
    assert oc_layout.config_from_model_cfg(data["model_cfg"]) == parity.load(folders["quickgelu"]).config
    # open_clip's own loader takes it, strictly
    model = open_clip.CLIP(**data["model_cfg"])
    from safetensors.torch import load_file
    model.load_state_dict(load_file(out / "open_clip_model.safetensors"), strict=True)


def test_logits_of_one_tower(folders):
    from click.testing import CliRunner

    from parity.cli import main

    both = parity.logits(folders["gelu"], "paddle", "cpu")
    result = CliRunner().invoke(main, ["logits", str(folders["gelu"]), "--framework", "paddle", "--tower", "text",
                                       "--json"])
    assert result.exit_code == 0, result.output
    text = json.loads(result.output)
    assert text["logit"] is None and "image_features" not in text
    assert text["text_features"] == both["text_features"] and both["logit"] is not None
    info = CliRunner().invoke(main, ["info", str(folders["gelu"] / "open_clip_pytorch_model.bin")])
    assert "model       unregistered CLIP" in info.output  # tiny shapes: no registered model
