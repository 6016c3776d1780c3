import math

import pytest
import torch

from parity.harness.inputs import canonical_inputs
from parity.models.build import torch_model
from parity.testing.official import official_clip, official_model_module
from parity.testing.synthetic import cached_state_dict, make_state_dict, release_dtype
from conftest import config_of


@pytest.mark.parametrize("variant", ["RN50", "ViT-B/32"])
def test_dtype_mix_is_the_releases(variant):
    # the release's dtype of each tensor is what openai/CLIP's convert_weights leaves on the official model
    config = config_of(variant)
    model = official_clip(config)
    official_model_module().convert_weights(model)
    official = {k: str(v.dtype).removeprefix("torch.") for k, v in model.state_dict().items()}
    state = cached_state_dict(variant, 0)
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} == official
    assert {k: release_dtype(k) for k in official} == official
    assert {"float16", "float32"} <= set(official.values())


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = make_state_dict("ViT-B/32", 3), make_state_dict("ViT-B/32", 3), make_state_dict("ViT-B/32", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_cache_returns_what_the_generator_makes(monkeypatch):
    from parity.testing import synthetic

    cached_state_dict("RN50", 0)  # made and written, if it was not there yet
    fresh = make_state_dict("RN50", 0)
    monkeypatch.setattr(synthetic, "make_state_dict", lambda *a: pytest.fail("the cache was not read"))
    cached = cached_state_dict("RN50", 0)  # now it can only come from the file
    assert sorted(fresh) == sorted(cached)
    assert all(fresh[k].dtype == cached[k].dtype and torch.equal(fresh[k], cached[k]) for k in fresh)


def test_scales_are_those_of_a_trained_network():
    state = cached_state_dict("RN50", 0)
    assert state["logit_scale"].item() == pytest.approx(math.log(100), abs=1e-6)
    gains = state["transformer.resblocks.0.ln_1.weight"]
    assert 0.5 < gains.min() and gains.max() < 1.5 and abs(gains.mean().item() - 1) < 0.02
    # BatchNorm statistics come from a calibration pass, not from init
    assert state["visual.layer2.1.bn2.num_batches_tracked"].item() == 1
    var = state["visual.layer2.1.bn2.running_var"]
    assert not torch.allclose(var, torch.ones_like(var))


@pytest.mark.parametrize("variant", ["RN50", "RN101"])
def test_activations_stay_of_order_one_through_the_depth(variant):
    state = cached_state_dict(variant, 0)
    model = torch_model(state, config_of(variant))
    rms = {}
    for name in ("layer1", "layer2", "layer3", "layer4", "attnpool"):
        getattr(model.visual, name).register_forward_hook(
            lambda m, i, o, name=name: rms.__setitem__(name, o.pow(2).mean().sqrt().item()))
    image, _ = canonical_inputs(224)
    with torch.no_grad():
        model.encode_image(torch.from_numpy(image))
    assert all(0.05 < v < 5 for v in rms.values()), rms
