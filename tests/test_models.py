"""The acceptance of the two implementations: official == parity torch (1e-6), parity torch ~ parity Paddle."""
import gc

import numpy as np
import pytest
import torch

from parity import layouts
from parity.harness.gate import OUTPUTS, compare, noise_floor, run_paddle, run_torch
from parity.harness.run import verify_state_dict
from parity.harness.inputs import canonical_inputs
from parity.models.build import paddle_model, torch_model
from parity.testing.official import build_official
from parity.testing.synthetic import cached_state_dict
from conftest import config_of, variant_params


@pytest.mark.parametrize("variant,seed", variant_params(seeds=(0, 1)))
def test_official_torch_and_paddle_agree(variant, seed, figures):
    config = config_of(variant)
    state = cached_state_dict(variant, seed)
    image, text = canonical_inputs(config.vision.image_size)

    official = build_official(state)  # openai/CLIP's build_model, float32 compute
    official_out = run_torch(official, image, text)
    del official
    gc.collect()

    # parity's torch vs Paddle, through the key map, gated as `parity verify-all` gates; the gate's torch
    # model is parity's, so its outputs are held to the official model's too (one torch build, not two)
    result = verify_state_dict(state, f"synthetic seed {seed}", config, photos=False, device="cpu")
    for tower in ("image", "text"):  # the same operations in the same order
        got = np.asarray(result.features["torch"][tower], np.float32)  # (embed,): the gate's float32 features
        np.testing.assert_allclose(got, official_out[f"{tower}_features"].ravel(), rtol=0, atol=1e-6, err_msg=tower)
    d, noise = result.to_dict()["differences"], result.noise_floor
    figures.append(
        f"{variant:15s} seed {seed}: logit {result.torch_logit:+.6f} |Δ| torch-paddle {d['logits']['max_abs']:.2e} "
        f"(bound {d['logits']['bound']:.1e}, {d['logits']['bound_kind']}); fp32 noise {noise['logits_measured']:.2e} "
        f"measured, {noise['logits_propagated']:.2e} propagated; max |Δ feature| "
        f"{max(d['image_features']['max_abs'], d['text_features']['max_abs']):.2e}, cosines "
        f"{d['image_features']['cosine']:.8f}/{d['text_features']['cosine']:.8f}")
    assert result.torch_logit == pytest.approx(official_out.logits.item(), abs=1e-6)
    for name in OUTPUTS:
        assert d[name]["max_abs"] <= d[name]["bound"] and d[name]["passed"], (name, d[name], noise)
    assert result.feature_cosine >= 0.99999 and result.passed and result.layers is None


def test_float64_runs_and_rounds_back_exactly():
    state = cached_state_dict("ViT-B/32", 0)
    model = torch_model(state, config_of("ViT-B/32"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image, text = canonical_inputs(224)
    noise = noise_floor(model, image, text)
    assert 0 < noise["logits_measured"] < 1e-4  # float64 really ran: not bit-equal to float32
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in model.state_dict().items())
    model64 = torch_model(state, config_of("ViT-B/32"), dtype="float64")
    assert run_torch(model64, image.astype(np.float64), text).logits.dtype == np.float64


def test_paddle_holds_exactly_the_loaded_tensors():
    state = cached_state_dict("RN50", 0)
    paddle_sd, _ = layouts.to_layout(state, "paddle")
    model = paddle_model(paddle_sd, config_of("RN50"))
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(paddle_sd)
    for k, v in paddle_sd.items():
        assert np.array_equal(loaded[k].numpy(), v), k


def test_paddle_loader_checks_before_paddle_sees_anything():
    state = cached_state_dict("RN50", 0)
    paddle_sd, _ = layouts.to_layout(state, "paddle", dtype=None)  # float16 tensors left in
    with pytest.raises(layouts.StateDictError, match=r"wrong dtype.*visual\.conv1\.weight float16"):
        paddle_model(paddle_sd, config_of("RN50"))
    paddle_sd, _ = layouts.to_layout(state, "paddle")
    paddle_sd["ln_final.weight"] = np.ones(7, np.float32)
    with pytest.raises(layouts.StateDictError, match=r"mis-shaped: ln_final\.weight \[7\]"):
        paddle_model(paddle_sd, config_of("RN50"))


def test_a_wrong_tensor_is_caught():
    # the comparison can fail: one perturbed norm gain deep in the vision tower exceeds every bound
    state = cached_state_dict("ViT-B/32", 0)
    image, text = canonical_inputs(224)
    model = torch_model(state, config_of("ViT-B/32"))
    torch_out = run_torch(model, image, text)
    noise = noise_floor(model, image, text, torch_out)
    paddle_sd, _ = layouts.to_layout(state, "paddle")
    assert all(compare(torch_out, run_paddle(paddle_model(paddle_sd, config_of("ViT-B/32")), image, text), noise=noise)[n].passed
               for n in OUTPUTS)
    paddle_sd["visual.transformer.resblocks.9.ln_2.weight"] = paddle_sd["visual.transformer.resblocks.9.ln_2.weight"] * 1.01
    diffs = compare(torch_out, run_paddle(paddle_model(paddle_sd, config_of("ViT-B/32")), image, text), noise=noise)
    assert not diffs["image_features"].passed and diffs["image_features"].max_abs > diffs["image_features"].bound
