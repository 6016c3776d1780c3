"""open_clip's SigLIP (`CustomTextCLIP`: a timm trunk under `visual.trunk.*`, a text tower under `text.*`)
against open_clip 3.3.0 and timm 1.0.31 themselves, and transformers' SiglipModel, the oracles.

A tiny trunk is registered with timm as the SigLIP trunks are made (no class token, a MAP pool): 48 wide,
24-wide heads, MLP ratio 2.5, images of 36 pixels in patches of 8, exact GELU; the text tower 64 wide, MLP
ratio 3.5, tanh GELU, eps 1e-6, a 16-token context. open_clip's model config names the trunk, which
parity does not know: the tensors say its sizes, and its heads and activation are given. open_clip
imports torchvision, which this machine cannot import: a test stub stands in for it
(tests/stubs/torchvision_stub.py says why).
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import parity
from parity import layouts
from parity.config import registry
from parity.layouts import open_clip_siglip
from helpers import refused, run, siglip_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
import torchvision_stub  # noqa: E402

torchvision_stub.install()
import open_clip  # noqa: E402
import torch  # noqa: E402

TRUNK = "vit_parity_test_siglip_36"
MODEL_CFG = {"embed_dim": 48, "init_logit_bias": -10, "custom_text": True,
             "vision_cfg": {"image_size": 36, "timm_model_name": TRUNK, "timm_model_pretrained": False,
                            "timm_pool": "map", "timm_proj": "none"},
             "text_cfg": {"context_length": 16, "vocab_size": 128, "width": 64, "heads": 2, "layers": 2, "mlp_ratio": 3.5,
                          "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "norm_kwargs": {"eps": 1e-6},
                          "act_kwargs": {"approximate": "tanh"}, "tokenizer_kwargs": {"clean": "canonicalize"}}}
BOUND = 1e-5  # open_clip against transformers (and parity) on the same tensors


def _register_trunk():
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if TRUNK in __import__("timm").list_models(TRUNK):
        return

    @register_model
    def vit_parity_test_siglip_36(pretrained=False, **kwargs):
        args = dict(img_size=36, patch_size=8, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2.5, class_token=False,
                    global_pool="map")
        return _create_vision_transformer(TRUNK, pretrained=pretrained, **dict(args, **kwargs))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """open_clip's model, its norms, biases, latent, scale and bias moved off their init, and its hub folder
    as open_clip's save_for_hf writes it (the state dict as safetensors, open_clip_config.json)."""
    from safetensors.torch import save_file

    warnings.simplefilter("ignore")
    _register_trunk()
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(MODEL_CFG["embed_dim"], MODEL_CFG["vision_cfg"], MODEL_CFG["text_cfg"],
                                     init_logit_bias=-10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias") or "latent" in name or name.startswith("logit"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("open_clip_siglip") / "oc"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": MODEL_CFG, "preprocess_cfg": open_clip_siglip.PREPROCESS}))
    return model, folder


def given(folder):
    """The folder's config with what timm's name for a test trunk cannot tell parity: 2 heads, exact GELU."""
    ck = parity.load(folder)
    assert ck.config.missing() == ["vision.heads", "vision.activation"]
    return replace(ck.config, vision=replace(ck.config.vision, heads=2, activation="gelu"))



def test_the_folder_reads_with_its_config_and_asks_for_what_it_cannot_say(made, tmp_path):
    _, folder = made
    ck = parity.load(folder)
    assert (ck.layout, ck.config_source, ck.config.vision.image_size, ck.config.text.activation) == \
        ("open_clip", "open_clip_config.json", 36, "gelu_tanh")
    assert ck.config.vision.width == 48 and ck.config.vision.layers == 2  # the tensors say the trunk's sizes
    refused(run("verify", str(folder), "--device", "cpu"), "vision.heads", "config")


def test_to_transformers_loads_strictly_and_computes_what_open_clip_computes(made, tmp_path):
    import transformers

    model, folder = made
    parity.convert(folder, "hf", tmp_path / "hf", config=given(folder))
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    # each tower's activation, as open_clip computes it: exact GELU in the trunk, tanh in the text tower
    assert (written["vision_config"]["hidden_act"], written["text_config"]["hidden_act"]) == ("gelu", "gelu_pytorch_tanh")
    theirs, info = transformers.SiglipModel.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                            output_loading_info=True)
    assert not any(info.values()), info
    image, ids = (torch.from_numpy(x) for x in siglip_inputs(36, 128))
    with torch.no_grad():
        oc_image, oc_text = model.encode_image(image), model.encode_text(ids)
        oc_logits = model.logit_scale.exp() * torch.nn.functional.normalize(oc_image, dim=-1) @ \
            torch.nn.functional.normalize(oc_text, dim=-1).T + model.logit_bias
        hf = theirs.eval()(input_ids=ids, pixel_values=image)
        hf_image = theirs.vision_model(pixel_values=image).pooler_output
        hf_text = theirs.text_model(input_ids=ids).pooler_output
    for name, a, b in (("image", hf_image, oc_image), ("text", hf_text, oc_text), ("logits", hf.logits_per_image, oc_logits)):
        assert (a - b).abs().max() <= BOUND, name
    # and parity's torch model computes it too
    mine = parity.load_model(folder, device="cpu", config=given(folder))
    with torch.no_grad():
        assert (mine.encode_image(image) - oc_image).abs().max() <= BOUND
        assert (mine.encode_text(ids) - oc_text).abs().max() <= BOUND


def test_round_trips_through_transformers_and_paddle_are_bit_exact(made, tmp_path):
    _, folder = made
    source = parity.load(folder).state_dict
    parity.convert(folder, "hf", tmp_path / "hf", config=given(folder))
    parity.convert(tmp_path / "hf", "paddle", tmp_path / "siglip.pdparams")
    # back to open_clip's names in memory: a folder would have to name a timm trunk parity does not know
    back = parity.load(tmp_path / "siglip.pdparams").in_layout("open_clip", dtype=None).state_dict
    assert sorted(back) == sorted(source)
    assert all(back[k].dtype == source[k].dtype and back[k].tobytes() == source[k].tobytes() for k in source)
    assert back["logit_bias"].shape == ()  # 0-d in open_clip, [1] in the hub
    report = parity.verify(folder, device="cpu", config=given(folder), photos=False)
    assert report.passed and report.loss == "sigmoid"


def test_named_trunks_write_open_clip_folders_and_refuse_what_open_clip_would_compute_otherwise():
    hf = registry.get("siglip-so400m-patch14-384").config  # transformers' SigLIP-1: tanh GELU in both towers
    with pytest.raises(parity.ParityError, match="vit_so400m_patch14_siglip_384 computes gelu"):
        open_clip_siglip.config_to_json(hf)
    exact = replace(hf, vision=replace(hf.vision, activation="gelu"), text=replace(hf.text, activation="gelu"))
    written = open_clip_siglip.config_to_json(exact)
    assert written["model_cfg"]["vision_cfg"]["timm_model_name"] == "vit_so400m_patch14_siglip_384"
    assert layouts.open_clip.config_from_model_cfg(written["model_cfg"]) == exact
    # open_clip's own model config for the same model, read as open_clip builds it (int(1152 * 3.7362) = 4304)
    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-SO400M-14-SigLIP-384.json").read_text())
    assert layouts.open_clip.config_from_model_cfg(cfg) == exact


def test_open_clips_own_so400m_keys_map_to_transformers_on_the_meta_device():
    """open_clip's ViT-SO400M-14-SigLIP-384 (its real timm trunk), built on the meta device: its state dict's
    keys and shapes are the SigLIP rows' image of the hub's for the registry's so400m."""
    warnings.simplefilter("ignore")
    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-SO400M-14-SigLIP-384.json").read_text())
    with torch.device("meta"):
        model = open_clip.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], init_logit_bias=-10)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config = layouts.open_clip.config_from_model_cfg(cfg)
    assert layouts.get("open_clip").rows_for(config).layout_shapes(layouts.HUB.shapes(config)) == theirs


def test_other_open_clip_models_stay_refused(made, tmp_path):
    from safetensors.torch import save_file

    model, _ = made
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text.text_projection")}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "headless.safetensors")
    refused(run("info", str(tmp_path / "headless.safetensors")), "without a text head")
    with pytest.raises(parity.ParityError, match="proj_type"):
        layouts.open_clip.config_from_model_cfg({**MODEL_CFG, "text_cfg": {**MODEL_CFG["text_cfg"], "proj_type": "none"}})
