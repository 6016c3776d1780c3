import math

import pytest

from parity.keymap import torch_shapes
from parity.variants import VARIANTS, ConfigError, detect_layout, get_config, infer_config
from conftest import shape_dict

# the table: name -> (embed, res, vision layers, width, patch, text w/h/l, params in M)
TABLE = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, (512, 8, 12), 102.0),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, (512, 8, 12), 119.7),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, (640, 10, 12), 178.3),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, (768, 12, 12), 291.0),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, (1024, 16, 12), 623.3),
    "ViT-B/32": (512, 224, 12, 768, 32, (512, 8, 12), 151.3),
    "ViT-B/16": (512, 224, 12, 768, 16, (512, 8, 12), 149.6),
    "ViT-L/14": (768, 224, 24, 1024, 14, (768, 12, 12), 427.6),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, (768, 12, 12), 427.9),
}


@pytest.mark.parametrize("name", TABLE)
def test_registry_matches_the_release_table(name):
    c = get_config(name)
    embed, res, layers, width, patch, text, params = TABLE[name]
    assert (c.embed_dim, c.image_resolution, c.vision_layers, c.vision_width, c.vision_patch_size) == \
        (embed, res, layers, width, patch)
    assert (c.transformer_width, c.transformer_heads, c.transformer_layers) == text
    assert (c.context_length, c.vocab_size) == (77, 49408)
    assert c.vision_heads == (width // 64 if c.is_vit else width * 32 // 64)
    n = sum(math.prod(s) for k, s in torch_shapes(c).items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert round(n / 1e6, 1) == params
    assert len(c.sha256) == 64 and c.filename.endswith(".pt")


def test_registry_has_exactly_the_nine_releases():
    assert list(VARIANTS) == list(TABLE)


@pytest.mark.parametrize("spelling,name", [
    ("ViT-B/32", "ViT-B/32"), ("ViT-B-32", "ViT-B/32"), ("vit-b-32", "ViT-B/32"), ("rn50x4", "RN50x4"),
    ("ViT-L/14@336px", "ViT-L/14@336px"), ("ViT-L-14-336px", "ViT-L/14@336px"), ("ViT-L-14-336", "ViT-L/14@336px"),
])
def test_names_are_accepted_in_every_spelling(spelling, name):
    assert get_config(spelling).name == name


def test_unknown_name_is_refused_with_the_list():
    with pytest.raises(ConfigError, match="unknown variant 'ViT-H/14'.*RN50"):
        get_config("ViT-H/14")


@pytest.mark.parametrize("name", TABLE)
@pytest.mark.parametrize("layout", ["torch", "paddle"])
def test_infer_config_recovers_every_entry_in_both_layouts(name, layout):
    config = get_config(name)
    inferred = infer_config(shape_dict(config, layout))
    assert inferred == config  # every hyper-parameter, and the name and hash of the release


def test_infer_config_names_no_release_for_a_custom_shape():
    from dataclasses import replace
    custom = replace(get_config("ViT-B/32"), vision_layers=6, name=None, sha256=None, filename=None)
    inferred = infer_config(shape_dict(custom))
    assert inferred.name is None and inferred.vision_layers == 6 and inferred.architecture() == custom.architecture()


def test_detect_layout():
    assert detect_layout(shape_dict(get_config("RN50"))) == "torch"
    assert detect_layout(shape_dict(get_config("RN50"), "paddle")) == "paddle"
    with pytest.raises(ConfigError, match="not a CLIP state dict"):
        detect_layout(["fc.weight", "fc.bias"])
    with pytest.raises(ConfigError, match="mix both layouts"):
        detect_layout(["a.attn.in_proj_weight", "b.attn.q_proj.weight"])


@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_infer_config_on_real_state_dicts_of_both_layouts(name):
    from parity.keymap import to_paddle
    from parity.synthetic import cached_state_dict, numpy_state_dict

    torch_sd = numpy_state_dict(cached_state_dict(name, 0))
    assert infer_config(torch_sd) == get_config(name)
    assert infer_config(to_paddle(torch_sd)[0]) == get_config(name)
