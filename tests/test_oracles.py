"""Every layout against its own library, the oracle: transformers (hf), paddlenlp, paddleclip, passl.

For one ResNet and one ViT per layout (those it can hold), on synthetic weights: the file or folder that
parity writes loads strictly into the library's model, that model computes what parity's model of the
same framework computes (1e-5 absolute plus 1e-5 relative, element by element) on the canonical pair and
on the photographs with their captions, the way back to the hub is bit-exact, and what the library
saves itself parity reads with the same tensors. parity's torch and Paddle models are held to each other
by `parity verify`'s gate elsewhere (test_models, test_verify), so each library is tied to the torch model.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import parity
from parity import layouts
from parity.models.frameworks import import_paddle
from parity.harness.gate import Outputs, run_paddle, run_torch
from parity.harness.inputs import canonical_inputs, sample_set
from parity.models.build import paddle_model, torch_model
from parity.testing.synthetic import release_archive
from parity.io.save import same_bits

# one model's cases side by side: parity's outputs are computed once per model (`reference`)
CASES = [("hf", "ViT-B/32"), ("paddlenlp", "ViT-B/32"), ("paddleclip", "ViT-B/32"), ("passl", "ViT-B/32"),
         ("paddlenlp", "RN50"), ("paddleclip", "RN50")]
ATOL = RTOL = 1e-5
STUBS = Path(__file__).resolve().parent / "stubs"


def _f64(t) -> np.ndarray:
    return np.asarray(t.detach().numpy() if hasattr(t, "detach") else t.numpy(), dtype=np.float64)


# ---------------------------------------------------------------- the libraries, each behind the same four calls
class HF:
    framework = "torch"

    def load(self, path, config):
        from transformers import CLIPModel
        model, info = CLIPModel.from_pretrained(str(path), output_loading_info=True)
        assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
        return model.eval()

    def outputs(self, model, image, text):
        import torch
        with torch.no_grad():
            i, t = torch.from_numpy(image), torch.from_numpy(text)
            return Outputs(_f64(model(input_ids=t, pixel_values=i).logits_per_image),
                           _f64(model.get_image_features(pixel_values=i)), _f64(model.get_text_features(input_ids=t)))

    def save(self, model, folder):
        model.save_pretrained(str(folder))
        return folder

    def state(self, model):
        return {k: v.numpy() for k, v in model.state_dict().items()}


class PaddleNLP:
    framework = "paddle"

    def load(self, path, config):
        from paddlenlp.transformers import CLIPConfig, CLIPModel
        paddle = import_paddle()
        model = CLIPModel(CLIPConfig.from_pretrained(str(path)))
        missing, unexpected = model.set_state_dict(paddle.load(str(path / "model_state.pdparams")))
        assert missing == [] and unexpected == [], (missing, unexpected)
        CLIPModel.from_pretrained(str(path))  # its own loader takes the folder too
        return model.eval()

    def outputs(self, model, image, text):
        paddle = import_paddle()
        with paddle.no_grad():
            i, t = paddle.to_tensor(image), paddle.to_tensor(text)
            return Outputs(_f64(model(input_ids=t, pixel_values=i).logits_per_image),
                           _f64(model.get_image_features(pixel_values=i)), _f64(model.get_text_features(input_ids=t)))

    def save(self, model, folder):
        model.save_pretrained(str(folder))
        return folder

    def state(self, model):
        return {k: v.numpy() for k, v in model.state_dict().items()}


def paddleclip_module():
    """paddleclip's model.py, by path: its package is named `clip`, as openai-clip's is, so it is installed
    apart (`make install` puts it under the venv's oracles/) and never imported as a package."""
    path = Path(sys.prefix) / "oracles" / "paddleclip" / "clip" / "model.py"
    spec = importlib.util.spec_from_file_location("paddleclip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PaddleCLIP:
    framework = "paddle"

    def load(self, path, config):
        paddle = import_paddle()
        v, t = config.vision, config.text
        model = paddleclip_module().CLIP(config.embed_dim, v.image_size, v.layers, v.width, v.patch_size,
                                         t.context_length, t.vocab_size, t.width, t.heads, t.layers)
        missing, unexpected = model.set_state_dict(paddle.load(str(path)))
        assert missing == [] and unexpected == ["parity@@extras"], (missing, unexpected)  # parity's record
        return model.eval()

    def outputs(self, model, image, text):
        paddle = import_paddle()
        with paddle.no_grad():
            i, t = paddle.to_tensor(image), paddle.to_tensor(text)
            return Outputs(_f64(model(i, t)[0]), _f64(model.encode_image(i)), _f64(model.encode_text(t)))

    def save(self, model, folder):
        paddle = import_paddle()
        folder.mkdir()
        path = folder / "paddleclip.pdparams"
        paddle.save(model.state_dict(), str(path))
        return path

    def state(self, model):
        return {k: v.numpy() for k, v in model.state_dict().items()}


class PASSL:
    framework = "paddle"

    def load(self, path, config):
        paddle = import_paddle()
        sys.path.insert(0, str(STUBS))
        import paddle_fluid
        paddle_fluid.install()
        from passl.modeling.architectures import CLIPWrapper
        v, t = config.vision, config.text
        arch = {"name": "CLIP", "embed_dim": config.embed_dim, "image_resolution": v.image_size,
                "vision_layers": v.layers, "vision_width": v.width, "vision_patch_size": v.patch_size,
                "context_length": t.context_length, "vocab_size": t.vocab_size, "transformer_width": t.width,
                "transformer_heads": t.heads, "transformer_layers": t.layers, "qkv_bias": True}
        model = CLIPWrapper(architecture=arch, head={"name": "CLIPHead"})
        missing, unexpected = model.set_state_dict(paddle.load(str(path))["state_dict"])  # as PASSL's notebooks load it
        assert missing == [] and unexpected == [], (missing, unexpected)
        return model.eval()

    def outputs(self, model, image, text):
        paddle = import_paddle()
        with paddle.no_grad():
            i, t = paddle.to_tensor(image), paddle.to_tensor(text)
            # is_train=True: PASSL's evaluation logits leave out the logit scale (plain cosines)
            return Outputs(_f64(model.model(i, t, is_train=True)[0]), _f64(model.model.encode_image(i)),
                           _f64(model.model.encode_text(t)))

    def save(self, model, folder):
        paddle = import_paddle()
        folder.mkdir()
        path = folder / "passl.pdparams"
        paddle.save({"state_dict": model.state_dict()}, str(path))
        return path

    def state(self, model):  # under parity's names: the wrapper's 'model.' prefix, which parity strips
        return {k.removeprefix("model."): v.numpy() for k, v in model.state_dict().items()}


LIBRARIES = {"hf": HF(), "paddlenlp": PaddleNLP(), "paddleclip": PaddleCLIP(), "passl": PASSL()}


# ---------------------------------------------------------------- parity's own models, once per model
_REFERENCE: dict = {}


def reference(model: str):
    """parity's torch and Paddle models' outputs on the canonical pair and the photographs."""
    if model not in _REFERENCE:
        ck = parity.load(release_archive(model))
        resolution = ck.config.vision.image_size
        inputs = [canonical_inputs(resolution), (lambda s: (s.images, s.tokens))(sample_set(resolution))]
        out = {"ck": ck, "inputs": inputs}
        net = torch_model(ck.hub_state(), ck.config)
        out["torch"] = [run_torch(net, *pair) for pair in inputs]
        del net
        net = paddle_model(ck.in_layout("paddle").state_dict, ck.config)
        out["paddle"] = [run_paddle(net, *pair) for pair in inputs]
        del net
        _REFERENCE.clear()  # one model's outputs at a time
        _REFERENCE[model] = out
    return _REFERENCE[model]


def assert_close(got: Outputs, want: Outputs, what: str):
    for name in ("logits", "image_features", "text_features"):
        a, b = got[name], want[name]
        assert a.shape == b.shape, (what, name, a.shape, b.shape)
        excess = np.abs(a - b) - (ATOL + RTOL * np.abs(b))
        assert excess.max() <= 0, (what, name, float(np.abs(a - b).max()))


@pytest.mark.parametrize("layout,model", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_the_library_loads_what_parity_writes_and_computes_the_same(layout, model, tmp_path):
    warnings.simplefilter("ignore")
    library = LIBRARIES[layout]
    ref = reference(model)
    ck = ref["ck"]
    suffix = "" if layouts.get(layout).format == "folder" else ".pdparams"
    written = tmp_path / f"{layout}{suffix}"
    parity.convert(release_archive(model), layout, written)
    # the way back to the hub is bit-exact, dtypes included
    parity.convert(written, "torch", tmp_path / "back.pt")
    back = parity.load(tmp_path / "back.pt").state_dict
    assert list(back) == list(ck.state_dict) or sorted(back) == sorted(ck.state_dict)
    assert all(same_bits(back[k], v) for k, v in ck.state_dict.items())
    # the library's own model takes the file strictly and computes what parity's model computes
    net = library.load(written, ck.config)
    for pair, want in zip(ref["inputs"], ref[library.framework]):
        assert_close(library.outputs(net, *pair), want, f"{layout} {model}")
    # what the library saves itself, parity reads: the same tensors, under the same names
    saved = library.save(net, tmp_path / "native")
    again = parity.load(saved)
    assert again.layout == (layout if layout != "paddleclip" or ck.config.vision.kind == "resnet" else "paddle")
    native = library.state(net)
    state = again.state_dict
    assert sorted(state) == sorted(native)
    assert all(np.array_equal(state[k], native[k]) and state[k].dtype == native[k].dtype for k in native)
    if layout == "paddleclip" and ck.config.vision.kind == "vit":
        # read as parity's Paddle layout, which any CLIP may be in: ViT-B/32's shapes are also open_clip's
        # GELU ViT-B-32's, so without a config file they name no config
        assert again.config == ck.config.shapes() and again.config_source.startswith("ambiguous")
    else:  # from its own config.json where it has one, else by its shapes (PASSL: and its layout)
        assert again.config == ck.config
