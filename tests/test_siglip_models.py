"""SigLIP's towers in both model files (`parity.models.torch_siglip`, `paddle_siglip`), held to transformers'
SiglipVisionModel, SiglipTextModel and SiglipModel (the oracle) on tiny non-default configs: 32-wide heads,
3 layers, MLP 96, images of 32 pixels in patches of 8, a 16-token context; the image tower 48 wide (24-wide
heads), the text tower 64 wide (32-wide heads) with a head projecting it to the image tower's 48. The first
step of the SigLIP issue: the towers are not yet a tower kind, a layout or a registry entry."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from parity.models.frameworks import import_paddle
from helpers import siglip_inputs

VISION = dict(hidden_size=48, intermediate_size=96, num_attention_heads=2, num_hidden_layers=3, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=64, intermediate_size=96, num_attention_heads=2, num_hidden_layers=3, vocab_size=1000,
            max_position_embeddings=16, projection_size=48)
TORCH_BOUND, PADDLE_BOUND = 1e-6, (1e-5, 1e-5)  # parity's torch against transformers; Paddle against torch


@pytest.fixture(scope="module")
def siglip():
    """transformers' SiglipModel, its LayerNorms, biases, probe, scale and bias away from their init."""
    import torch
    import transformers

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    # transformers' eager attention: the same operations as parity's (its default, SDPA's fused kernel, rounds
    # otherwise: 1.3e-6 apart after three layers, the same in float64 to 1e-15)
    config = transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    config._attn_implementation = "eager"
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "probe" in name or name.startswith("logit"):
                p.add_(torch.randn_like(p) * 0.1)
    return model



def torch_towers(siglip):
    from parity.models import torch_siglip as ts

    vision = ts.SiglipVisionTransformer(48, 3, 2, 96, 32, 8, "gelu_tanh", 1e-6).eval()
    text = ts.SiglipTextTransformer(64, 3, 2, 96, 1000, 16, 48, "gelu_tanh", 1e-6).eval()
    for mine, theirs in ((vision, siglip.vision_model), (text, siglip.text_model)):
        mine.load_state_dict(theirs.state_dict(), strict=True)  # transformers' own names, position_ids unsaved
    return vision, text


def paddle_state(state: dict) -> dict:
    """A torch tower's state dict in the Paddle model's layout: Linears [in, out], the MAP in_proj split."""
    out = {}
    for key, value in state.items():
        value = value.numpy()
        if key.startswith("head.attention.in_proj_"):
            for part, piece in zip("qkv", np.split(value, 3, axis=0)):  # [3W, ...] -> q, k, v
                kind = key.rsplit("_", 1)[1]
                out[f"head.attention.{part}_proj.{kind}"] = piece.T.copy() if kind == "weight" else piece
        elif key.endswith(".weight") and value.ndim == 2 and "embedding" not in key:
            out[key] = value.T.copy()  # torch Linear [out, in] -> Paddle [in, out]
        else:
            out[key] = value
    return out


def paddle_towers(vision, text):
    from parity.models import paddle_siglip as ps

    towers = (ps.SiglipVisionTransformer(48, 3, 2, 96, 32, 8, "gelu_tanh", 1e-6),
              ps.SiglipTextTransformer(64, 3, 2, 96, 1000, 16, 48, "gelu_tanh", 1e-6))
    for mine, theirs in zip(towers, (vision, text)):
        state = paddle_state(theirs.state_dict())
        assert sorted(mine.state_dict()) == sorted(state)
        missing, unexpected = mine.set_state_dict(state)
        assert not missing and not unexpected
        mine.eval()
    return towers


def close(got, want, atol, rtol=0.0, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert (np.abs(got - want) <= atol + rtol * np.abs(want)).all(), (what, float(np.abs(got - want).max()))


def test_parity_torch_computes_what_transformers_computes(siglip):
    import torch
    import transformers

    vision, text = torch_towers(siglip)
    image, ids = siglip_inputs(32, 1000)
    with torch.no_grad():
        i, t = torch.from_numpy(image), torch.from_numpy(ids)
        theirs_v = transformers.SiglipVisionModel(siglip.config.vision_config).eval()
        theirs_v.vision_model.load_state_dict(siglip.vision_model.state_dict())
        theirs_t = transformers.SiglipTextModel(siglip.config.text_config).eval()
        theirs_t.text_model.load_state_dict(siglip.text_model.state_dict())
        want_v = theirs_v(pixel_values=i, output_hidden_states=True)
        want_t = theirs_t(input_ids=t, output_hidden_states=True)
        got_v, got_t = vision.states(i), text.states(t)
        close(got_v["last_hidden_state"], want_v.last_hidden_state, TORCH_BOUND, what="vision last")
        close(got_v["penultimate_hidden_state"], want_v.hidden_states[-2], TORCH_BOUND, what="vision penultimate")
        close(got_v["pooled"], want_v.pooler_output, TORCH_BOUND, what="vision pooled (MAP head)")
        close(got_t["last_hidden_state"], want_t.last_hidden_state, TORCH_BOUND, what="text last")
        close(got_t["penultimate_hidden_state"], want_t.hidden_states[-2], TORCH_BOUND, what="text penultimate")
        close(got_t["pooled"], want_t.pooler_output, TORCH_BOUND, what="text pooled (head)")
        # the sigmoid logits: SiglipModel's own
        from parity.models.torch_siglip import logits
        out = siglip(input_ids=t, pixel_values=i)
        close(logits(vision(i), text(t), siglip.logit_scale, siglip.logit_bias), out.logits_per_image, 1e-5,
              what="logits")


def test_parity_paddle_computes_what_parity_torch_computes(siglip):
    import torch

    paddle = import_paddle()
    vision, text = torch_towers(siglip)
    p_vision, p_text = paddle_towers(vision, text)
    image, ids = siglip_inputs(32, 1000)
    with torch.no_grad():
        want = {**{f"v.{k}": v.numpy() for k, v in vision.states(torch.from_numpy(image)).items()},
                **{f"t.{k}": v.numpy() for k, v in text.states(torch.from_numpy(ids)).items()}}
    with paddle.no_grad():
        got = {**{f"v.{k}": v.numpy() for k, v in p_vision.states(paddle.to_tensor(image)).items()},
               **{f"t.{k}": v.numpy() for k, v in p_text.states(paddle.to_tensor(ids)).items()}}
    assert sorted(got) == sorted(want)
    for name in want:
        close(got[name], want[name], *PADDLE_BOUND, what=name)
