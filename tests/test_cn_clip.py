"""Chinese-CLIP's models against cn_clip 1.6.0 itself, the oracle: its CLIP built from its own shipped JSON
configs (`CLIP(**vision_cfg, **text_cfg)`; `create_model` would cast to fp16), with parity's synthetic
weights. cn_clip imports torchvision: the same test stub as for open_clip stands in (tests/stubs/).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import parity
from parity import layouts
from parity.config import registry
from parity.cli import main
from parity.errors import ParityError
from parity.models.frameworks import import_paddle
from parity.harness.gate import Outputs, float64, run_paddle, run_torch
from parity.harness.inputs import canonical_inputs, sample_set
from parity.models.build import paddle_model, torch_model
from parity.testing.synthetic import cached_state_dict
from parity.io.save import same_bits

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
    assert config.text.kind == "bert" and (config.text.activation, config.text.eps, config.text.context_length) == (
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
    shots = sample_set(config.vision.image_size, config.text.context_length, text="bert")
    inputs = {"canonical": canonical_inputs(config.vision.image_size, config.text.context_length, text="bert"),
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
    for layout in ("paddleclip", "open_clip"):
        with pytest.raises(ParityError, match=r"holds CLIP's own text tower( and SigLIP's text tower)?, not a BERT"):
            parity.convert(training_checkpoint, layout, tmp_path / layout)
    # ChineseCLIPModel has a ViT image tower only, in transformers and in PaddleNLP
    for layout, what in (("hf", "holds vit image towers beside a BERT, not a resnet"),
                         ("paddlenlp", "holds vit image towers beside a BERT, not a resnet")):
        with pytest.raises(ParityError, match=what):
            parity.convert(training_checkpoint, layout, tmp_path / layout)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- the ChineseCLIPModel folders
@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """ViT-B-16 + RoBERTa-base as cn_clip's training script saves it."""
    path = tmp_path_factory.mktemp("cn_vit") / "epoch_latest.pt"
    state = cached_state_dict(registry.get("cn_clip/ViT-B-16").config)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def _f64(t) -> np.ndarray:
    return np.asarray(t.detach().numpy() if hasattr(t, "detach") else t.numpy(), dtype=np.float64)


class HF:
    layout, framework = "hf", "torch"

    def load(self, folder):
        from transformers import ChineseCLIPModel
        model, info = ChineseCLIPModel.from_pretrained(str(folder), output_loading_info=True)
        assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
        return model.eval()

    def outputs(self, model, image, text):
        with torch.no_grad():
            i, t = torch.from_numpy(image), torch.from_numpy(text)
            mask = (t != 0).long()  # what ChineseCLIPProcessor gives; without it the padding is attended to
            # transformers 4.57's get_text_features fails (its text model has no pooler): pool [CLS] as it means to
            text_features = model.text_projection(model.text_model(input_ids=t, attention_mask=mask)[0][:, 0])
            return Outputs(_f64(model(input_ids=t, attention_mask=mask, pixel_values=i).logits_per_image),
                           _f64(model.get_image_features(pixel_values=i)), _f64(text_features))

    def tokenize(self, folder, texts):
        from transformers import AutoTokenizer
        return np.array(AutoTokenizer.from_pretrained(str(folder))(texts, padding="max_length", truncation=True)[
            "input_ids"])

    def save(self, model, folder):
        model.save_pretrained(str(folder))


class PaddleNLP:
    layout, framework = "paddlenlp", "paddle"

    def load(self, folder):
        from paddlenlp.transformers import ChineseCLIPConfig, ChineseCLIPModel
        paddle = import_paddle()
        model = ChineseCLIPModel(ChineseCLIPConfig.from_pretrained(str(folder)))
        missing, unexpected = model.set_state_dict(paddle.load(str(folder / "model_state.pdparams")))
        assert missing == [] and unexpected == [], (missing, unexpected)
        return model.eval()

    def outputs(self, model, image, text):
        paddle = import_paddle()
        with paddle.no_grad():
            i, t = paddle.to_tensor(image), paddle.to_tensor(text)
            mask = (t != 0).astype("int64")  # without it, PaddleNLP's get_text_features attends to the padding
            return Outputs(_f64(model(input_ids=t, attention_mask=mask, pixel_values=i).logits_per_image),
                           _f64(model.get_image_features(pixel_values=i)),
                           _f64(model.get_text_features(input_ids=t, attention_mask=mask)))

    def tokenize(self, folder, texts):
        from paddlenlp.transformers import ChineseCLIPTokenizer
        return np.array(ChineseCLIPTokenizer.from_pretrained(str(folder))(
            texts, padding="max_length", truncation=True, max_length=52)["input_ids"])

    def save(self, model, folder):
        model.save_pretrained(str(folder))


@pytest.mark.parametrize("library", [HF(), PaddleNLP()], ids=["hf", "paddlenlp"])
def test_chinese_clip_folders_load_strictly_and_compute_the_same(library, vit_checkpoint, tmp_path):
    """The folder that parity writes loads strictly in the library's ChineseCLIPModel, which computes what
    parity's model of its framework computes (1e-5 absolute + 1e-5 relative) on the canonical pair and the
    photographs with Chinese captions; its tokenizer gives parity's ids; through parity's Paddle layout
    and back it is bit-exact; what the library saves, parity reads, its context from the registry."""
    import warnings
    warnings.simplefilter("ignore")
    layout = library.layout
    config = registry.get("cn_clip/ViT-B-16").config
    folder = tmp_path / layout
    parity.convert(vit_checkpoint, layout, folder)
    ck = parity.load(folder)
    assert (ck.layout, ck.name, ck.vocab_file) == (layout, "cn_clip/ViT-B-16", folder / "vocab.txt")
    shots = sample_set(224, 52, text="bert")
    assert (library.tokenize(folder, shots.captions) == shots.tokens).all()
    pairs = [canonical_inputs(224, 52, text="bert"), (shots.images, shots.tokens)]
    state = cached_state_dict(config)
    if library.framework == "torch":
        net = torch_model(state, config)
        want = [run_torch(net, *pair) for pair in pairs]
    else:
        plan, _ = layouts.rows.from_hub({k: v.numpy() for k, v in state.items()}, layouts.paddle.KEYMAP, "float32")
        net = paddle_model(plan, config)
        want = [run_paddle(net, *pair) for pair in pairs]
    del net
    model = library.load(folder)
    for pair, expected in zip(pairs, want):
        got = library.outputs(model, *pair)
        for name in ("logits", "image_features", "text_features"):
            excess = np.abs(got[name] - expected[name]) - (1e-5 + 1e-5 * np.abs(expected[name]))
            assert excess.max() <= 0, (layout, name, float(np.abs(got[name] - expected[name]).max()))
    # what the library saves itself (no parity record): read with the same tensors, the context (52) from
    # the registry, since no library config says it
    library.save(model, tmp_path / "native")
    del model
    native = parity.load(tmp_path / "native")
    assert native.layout == layout and native.config == config
    assert native.config_source == "config.json, text.context_length from registry: cn_clip/ViT-B-16"
    assert sorted(native.state_dict) == sorted(ck.state_dict)
    assert all(np.array_equal(native.state_dict[k], v) for k, v in ck.state_dict.items())
    del native
    # to parity's Paddle layout and back: bit-exact, to the folder and to cn_clip's own file
    parity.convert(folder, "paddle", tmp_path / "p.pdparams")
    parity.convert(tmp_path / "p.pdparams", layout, tmp_path / "again")
    again = parity.load(tmp_path / "again").state_dict
    assert sorted(again) == sorted(ck.state_dict) and all(same_bits(again[k], v) for k, v in ck.state_dict.items())
    del again, ck
    parity.convert(tmp_path / "again", "torch", tmp_path / "back.pt")
    back = parity.load(tmp_path / "back.pt").state_dict
    assert sorted(back) == sorted(state) and all(same_bits(back[k], v.numpy()) for k, v in state.items())


@pytest.mark.parametrize("name", ["ViT-L-14", "ViT-L-14-336", "ViT-H-14"])
def test_hf_chinese_clip_has_the_hf_layouts_keys_for_the_large_models(name):
    """On the meta device: transformers' ChineseCLIPModel, built from the config.json parity writes, has the
    keys and shapes of parity's hf layout (ViT-H-14: its 80-wide heads come through as 16)."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    config = registry.get(f"cn_clip/{name}").config
    with torch.device("meta"):
        model = ChineseCLIPModel(ChineseCLIPConfig(**layouts.hf.config_to_json(config)))
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert theirs == layouts.hf.KEYMAP.layout_shapes(layouts.HUB.shapes(config))
    assert model.vision_model.encoder.layers[0].self_attn.num_heads == config.vision.heads
    assert layouts.hf.config_from_json(layouts.hf.config_to_json(config)) == replace(
        config, text=replace(config.text, context_length=None))


def test_a_chinese_clip_config_json_is_read_as_the_libraries_read_it(tmp_path):
    from parity.config import cn_clip as chinese_clip
    from parity.config.schema import ConfigError

    config = registry.get("cn_clip/ViT-B-16").config
    data = layouts.paddlenlp.config_to_json(config)
    assert data["model_type"] == "chinese_clip" and data["text_config"]["layer_norm_eps"] == 1e-12
    for key, value, message in (("pad_token_id", 1, "pads with id 0"),
                                ("position_embedding_type", "relative_key", "absolute positions"),
                                ("hidden_act", "gelu_new", "text.activation"),
                                ("fuse", True, "fused BERT layers")):
        bad = json.loads(json.dumps(data))
        bad["text_config"][key] = value
        with pytest.raises(ConfigError, match=message):
            layouts.paddlenlp.config_from_json(bad)
    defaults = chinese_clip.config_from_json({"model_type": "chinese_clip"})  # both libraries' defaults
    assert (defaults.text.width, defaults.text.eps, defaults.text.positions, defaults.vision.patch_size) == (
        768, 1e-12, 512, 32)


def test_a_folders_vocabulary_and_context_come_from_the_folder_the_record_or_the_user(tmp_path):
    """A small unregistered Chinese-CLIP in an hf folder: `verify` tokenizes with the folder's vocab.txt and
    takes the context from parity's record; the library's own save of it has no record, so its context is
    unknown (no library config says it) until the user gives a config; a broken vocab.txt is one line, exit 2."""
    from transformers import ChineseCLIPModel

    from parity.config.schema import Config, TextConfig, VisionConfig

    config = Config(32, VisionConfig("vit", 2, 96, 64, 16, 192, 2, "quick_gelu", 1e-5),
                    TextConfig(64, 2, 128, 52, 21128, 2, "gelu", 1e-12, kind="bert", positions=64, types=2))
    source = tmp_path / "tiny.pt"
    torch.save(cached_state_dict(config), source)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    parity.convert(source, "hf", tmp_path / "hf", config=config)
    ck = parity.load(tmp_path / "hf")
    assert ck.config == config and ck.config_source == "config.json, text.context_length from parity's record"
    report = parity.verify(tmp_path / "hf", photos=False)
    assert report.passed and f"vocabulary: {tmp_path / 'hf' / 'vocab.txt'}" in report.inputs["canonical"]

    ChineseCLIPModel.from_pretrained(str(tmp_path / "hf")).save_pretrained(str(tmp_path / "native"))
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(tmp_path / "native"), "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "text.context_length is unknown" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert parity.load(tmp_path / "native", config=tmp_path / "config.json").config == config

    (tmp_path / "hf" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    result = runner.invoke(main, ["verify", str(tmp_path / "hf"), "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "a WordPiece vocabulary without [CLS]" in result.output, result.output
