"""Chinese-CLIP's models against cn_clip 1.6.0 itself, the oracle: its CLIP built from its own shipped JSON
configs (`CLIP(**vision_cfg, **text_cfg)`; `create_model` would cast to fp16), with parity's synthetic
weights. cn_clip imports torchvision: the same test stub as for open_clip stands in (tests/stubs/).
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import parity
from parity import layouts, registry
from parity.cli import main
from parity.errors import ParityError
from parity.harness import float64, run_paddle, run_torch
from parity.inputs import canonical_inputs, sample_set
from parity.loading import paddle_model, torch_model
from parity.synthetic import cached_state_dict
from parity.writing import same_bits

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
import torchvision_stub  # noqa: E402

torchvision_stub.install()
import cn_clip.clip as cn  # noqa: E402
import torch  # noqa: E402
from cn_clip.clip.model import CLIP as CnCLIP  # noqa: E402

STRUCTS = {name: info["struct"].split("@") for name, info in cn.utils._MODEL_INFO.items()}  # vision@text
FAST = ("RN50", "ViT-B-16")  # RN50 + RBT3, ViT-B-16 + RoBERTa-wwm-ext-base
PERTURBED = "bert.encoder.layer.1.output.LayerNorm.weight"


def cn_clip_model(name: str, meta: bool = False):
    folder = Path(cn.__file__).parent / "model_configs"
    vision, text = (json.loads((folder / f"{part}.json").read_text()) for part in STRUCTS[name])
    if isinstance(vision["vision_layers"], str):
        vision["vision_layers"] = json.loads(vision["vision_layers"])  # RN50's "[3,4,6,3]"
    if meta:
        with torch.device("meta"):
            return CnCLIP(**vision, **text)
    return CnCLIP(**vision, **text).eval()


def cn_clip_outputs(model, image, text):
    with torch.no_grad():
        i, t = torch.from_numpy(image), torch.from_numpy(text)
        image_features, text_features, scale = model(i, t)  # normalised, and the logit scale
        return {"logits": (scale * image_features @ text_features.T).double().numpy(),
                "image_features": model.encode_image(i).double().numpy(),
                "text_features": model.encode_text(t).double().numpy()}


@pytest.mark.parametrize("name", list(STRUCTS))
def test_every_model_has_cn_clips_keys_shapes_and_counts(name):
    """On the meta device: ViT-L-14, ViT-L-14-336 and ViT-H-14 (large text tower) too."""
    from parity.models.torch_clip import CLIP

    config = registry.get(f"cn_clip/{name}").config
    theirs = cn_clip_model(name, meta=True)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes == layouts.HUB.shapes(config)
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # a ResNet's BatchNorm statistics
    assert sum(p.numel() for p in theirs.parameters()) == sum(int(np.prod(s)) for k, s in shapes.items()
                                                              if not k.endswith(buffers))
    with torch.device("meta"):
        ours = CLIP(config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    assert config.text.is_bert and (config.text.activation, config.text.eps, config.text.context_length) == (
        "gelu", 1e-12, 52)
    if name == "ViT-B-16":
        assert round(sum(int(np.prod(s)) for s in shapes.values()) / 1e6, 1) == 188.3  # the figure
    if name == "ViT-H-14":
        assert config.vision.heads == 16  # 80-wide heads, not width / 64 = 20


@pytest.mark.parametrize("name", FAST)
def test_parity_computes_what_cn_clip_computes(name, figures):
    """torch within 1e-6, Paddle within 1e-4 or 4x the float32 noise floor (parity's torch model in float64),
    on the canonical pair ("一张照片") and the photographs with Chinese captions."""
    config = registry.get(f"cn_clip/{name}").config
    state = cached_state_dict(config)
    model = cn_clip_model(name)
    model.load_state_dict(state, strict=True)
    shots = sample_set(config.vision.image_size, config.text.context_length, bert=True)
    inputs = {"canonical": canonical_inputs(config.vision.image_size, config.text.context_length, bert=True),
              "photos": (shots.images, shots.tokens)}
    want = {k: cn_clip_outputs(model, *pair) for k, pair in inputs.items()}
    del model
    net = torch_model(state, config)
    got, noise = {}, {}
    for k, (image, text) in inputs.items():
        got[k] = run_torch(net, image, text)
        with float64(net):
            exact = run_torch(net, image.astype(np.float64), text)
        noise[k] = {o: float(np.abs(got[k][o] - exact[o]).max()) for o in want[k]}
        for output in want[k]:
            delta = float(np.abs(got[k][output] - want[k][output]).max())
            assert delta <= 1e-6, ("torch", k, output, delta)
    del net
    plan, _ = layouts.rows.from_hub({k: v.numpy() for k, v in state.items()}, layouts.paddle.KEYMAP, "float32")
    net = paddle_model(plan, config)
    for k, (image, text) in inputs.items():
        out = run_paddle(net, image, text)
        for output in want[k]:
            delta = float(np.abs(out[output] - want[k][output]).max())
            figures.append(f"cn_clip {name:9} {k:9} {output:14} paddle |Δ| {delta:.1e} (float32 noise "
                           f"{noise[k][output]:.1e})")
            assert delta <= max(1e-4, 4 * noise[k][output]), ("paddle", k, output, delta)


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """RN50 + RBT3 saved as cn_clip's training script saves it: {'epoch', 'step', 'name', 'state_dict' (a
    DistributedDataParallel model's: every key behind 'module.'), 'optimizer'}, after one AdamW step of a
    fine-tune that trains the text tower's last layer and the projection."""
    folder = tmp_path_factory.mktemp("cn_clip")
    config = registry.get("cn_clip/RN50").config
    model = cn_clip_model("RN50")
    model.load_state_dict(cached_state_dict(config), strict=True)
    trained = [p for k, p in model.named_parameters() if k.startswith(("bert.encoder.layer.2.", "text_projection"))]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    path = folder / "epoch_latest.pt"
    torch.save({"epoch": 3, "step": 1200, "name": "pokemon-finetune",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict()}, path)
    return path


def test_a_training_checkpoint_is_read_converted_and_back_bit_exact(training_checkpoint, tmp_path):
    ck = parity.load(training_checkpoint)
    assert ck.name == "cn_clip/RN50" and ck.config_source == "registry: cn_clip/RN50 (by its shapes)"
    assert ck.unwrapped == ["wrapper 'state_dict' (not read beside it: epoch, name, optimizer, step)",
                            "prefix 'module.'"]
    info = CliRunner().invoke(main, ["info", str(training_checkpoint)]).output
    assert "not read beside it: epoch, name, optimizer, step" in info and "cn_clip/RN50" in info
    parity.convert(training_checkpoint, "paddle", tmp_path / "p.pdparams")
    parity.convert(tmp_path / "p.pdparams", "torch", tmp_path / "back.pt")
    back = parity.load(tmp_path / "back.pt").state_dict
    assert sorted(back) == sorted(ck.state_dict) and all(same_bits(back[k], v) for k, v in ck.state_dict.items())


def test_verify_passes_and_a_perturbed_bert_layernorm_is_named_first(training_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["verify", str(training_checkpoint), "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cn_clip-RN50.json").read_text())
    assert report["passed"] and "一张照片" in report["inputs"]["canonical"]
    assert report["photos"]["argmax_agreement"] == 1.0 and report["photos"]["captions"][1] == "一张虎斑猫的脸部照片"
    parity.convert(training_checkpoint, "paddle", tmp_path / "p.pdparams")
    with open(tmp_path / "p.pdparams", "rb") as f:
        content = pickle.load(f)  # parity's own file: plain pickle is fine here
    content[PERTURBED] = content[PERTURBED] * np.float32(1.05)
    with open(tmp_path / "perturbed.pdparams", "wb") as f:
        pickle.dump(content, f, protocol=4)
    result = CliRunner().invoke(main, ["verify", str(training_checkpoint), str(tmp_path / "perturbed.pdparams"),
                                       "--report-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "cn_clip-RN50.json").read_text())
    assert report["layers"]["first_divergence"] == "bert.encoder.layer.1.output.LayerNorm"
    table = {row["module"]: row for row in report["layers"]["table"]}
    assert table["bert.encoder.layer.1.output.dense"]["passed"] and table["bert.encoder.layer.0.output"]["passed"]


def test_layouts_without_a_bert_refuse_it(training_checkpoint, tmp_path):
    for layout in ("hf", "paddlenlp", "paddleclip", "open_clip"):
        with pytest.raises(ParityError, match="holds CLIP's own text tower, not a BERT"):
            parity.convert(training_checkpoint, layout, tmp_path / layout)
