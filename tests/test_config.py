"""Configs as data, the registry, shape inference, and where a checkpoint's config comes from."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from parity import layouts
from parity.config import registry
from parity.config.resolve import read_config_file, resolve_config
from parity.config.schema import Config, ConfigError
from conftest import config_of, shape_dict

# name -> (embed, res, vision layers, width, patch, text w/h/l, params in M)
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
REFERENCE = {"RN50": 18.1140, "RN50x4": 29.5482, "RN101": 33.5211, "ViT-B/32": 27.5936}


@pytest.mark.parametrize("name", TABLE)
def test_registry_matches_the_release_table(name):
    entry = registry.get(name)
    c = entry.config
    embed, res, layers, width, patch, (tw, th, tl), params = TABLE[name]
    v, t = c.vision, c.text
    assert (c.embed_dim, v.image_size, v.layers, v.width, v.patch_size) == (embed, res, layers, width, patch)
    assert (t.width, t.heads, t.layers, t.mlp_width) == (tw, th, tl, 4 * tw)
    assert (t.context_length, t.vocab_size, t.activation, t.eps) == (77, 49408, "quick_gelu", 1e-5)
    if v.kind == "vit":
        assert (v.heads, v.mlp_width, v.activation, v.eps) == (width // 64, 4 * width, "quick_gelu", 1e-5)
    else:
        assert v.heads == width * 32 // 64 and v.activation is None
    assert c.complete and c.missing() == []
    n = sum(math.prod(s) for k, s in layouts.HUB.shapes(c).items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert round(n / 1e6, 1) == params
    assert len(entry.sha256) == 64 and entry.filename.endswith(".pt")
    assert entry.reference_logit == REFERENCE.get(name)


def test_registry_holds_the_nine_releases_first():
    assert list(registry.ENTRIES)[:9] == list(TABLE)


@pytest.mark.parametrize("spelling,name", [
    ("ViT-B/32", "ViT-B/32"), ("vit-b/32", "ViT-B/32"), ("rn50x4", "RN50x4"), ("ViT-L/14@336px", "ViT-L/14@336px"),
    ("ViT-L-14-336px", "ViT-L/14@336px"),
    # open_clip's own names are open_clip's models (GELU), in any case
    ("ViT-B-32", "ViT-B-32"), ("vit-b-32", "ViT-B-32"), ("ViT-H-14-quickgelu", "ViT-H-14-quickgelu"),
])
def test_names_are_accepted_in_every_spelling(spelling, name):
    assert registry.get(spelling).name == name


def test_a_spelling_of_two_entries_is_refused_not_chosen():
    with pytest.raises(ConfigError, match="'ViT_B_32' may name ViT-B/32 or ViT-B-32"):
        registry.get("ViT_B_32")
    # open_clip's ViT-L-14-336 is a GELU model parity does not register: not OpenAI's ViT-L/14@336px
    with pytest.raises(ConfigError, match="unknown model 'ViT-L-14-336'"):
        registry.get("ViT-L-14-336")


def test_unknown_name_is_refused_with_the_list():
    with pytest.raises(ConfigError, match="unknown model 'ViT-Z/14'.*RN50.*ViT-bigG-14"):
        registry.get("ViT-Z/14")


@pytest.mark.parametrize("name", TABLE)
@pytest.mark.parametrize("layout", ["openai", "paddle"])
def test_shapes_give_every_field_but_heads_activation_and_eps(name, layout):
    config = config_of(name)
    keymap = layouts.get(layout).keymap
    inferred = layouts.HUB.infer(keymap.hub_shapes({k: s.shape for k, s in shape_dict(config, layout).items()}))
    assert inferred == config.shapes()
    assert inferred.missing() == (["vision.heads", "vision.activation", "vision.eps", "text.heads", "text.activation",
                                   "text.eps"] if config.vision.kind == "vit" else ["vision.heads", "text.heads",
                                                                             "text.activation", "text.eps"])
    entry, fits = registry.config_by_shapes(inferred)
    if name in ("ViT-B/32", "ViT-B/16", "ViT-L/14"):  # open_clip's GELU models have the same tensors
        assert entry is None and {e.config.vision.activation for e in fits} == {"quick_gelu", "gelu"}
    else:
        assert entry.name == name  # the registry names it by its shapes


def test_a_custom_shape_matches_no_entry_and_stays_incomplete():
    custom = replace(config_of("ViT-B/32"), vision=replace(config_of("ViT-B/32").vision, layers=6))
    shapes = layouts.HUB.infer(layouts.HUB.shapes(custom))
    assert shapes.vision.layers == 6 and registry.by_shapes(shapes) == []
    config, source = resolve_config(shapes, None, None, "x.pt")
    assert source == "unknown" and not config.complete


def test_mlp_width_comes_from_the_shapes():
    config = config_of("ViT-B/32")
    wide = replace(config, vision=replace(config.vision, mlp_width=5000), text=replace(config.text, mlp_width=1234))
    assert layouts.HUB.infer(layouts.HUB.shapes(wide)) == wide.shapes()


def test_config_round_trips_through_json(tmp_path):
    for name in ("RN50", "ViT-L/14"):
        config = config_of(name)
        path = tmp_path / "c.json"
        path.write_text(json.dumps(config.to_dict()))
        assert read_config_file(path) == config
        assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("field,value,needle", [
    ("heads", 7, "vision.heads is 7, which does not divide the width 768"),
    ("activation", "swish", "vision.activation is 'swish'"),
    ("eps", 2.0, "vision.eps is 2.0"),
    ("kind", "cnn", "vision.kind is 'cnn'"),
])
def test_impossible_values_are_refused_naming_the_field(field, value, needle):
    data = config_of("ViT-B/32").to_dict()
    data["vision"][field] = value
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        Config.from_dict(data)


def test_a_config_that_contradicts_the_shapes_is_refused_naming_the_field():
    shapes = config_of("ViT-B/32").shapes()
    given = config_of("ViT-B/16")
    with pytest.raises(ConfigError, match="vision.patch_size 16 but x.pt's tensors say 32"):
        resolve_config(shapes, None, given, "x.pt")


def test_the_order_metadata_then_registry_then_given():
    config = config_of("ViT-L/14@336px")
    gelu = replace(config, text=replace(config.text, activation="gelu"))
    # metadata first
    assert resolve_config(config.shapes(), gelu, None, "x") == (gelu, "the file's own record")
    # then the registry, by the shapes
    assert resolve_config(config.shapes(), None, None, "x") == (config, "registry: ViT-L/14@336px (by its shapes)")
    # a given config that disagrees with what was found is an error, not a silent choice
    with pytest.raises(ConfigError, match="text.activation gelu but the file's config"):
        resolve_config(config.shapes(), None, gelu, "x")
    # the given config, where nothing else says it
    custom = replace(config, vision=replace(config.vision, layers=6))
    assert resolve_config(custom.shapes(), None, custom, "x") == (custom, "given")


def test_shapes_of_two_activations_name_no_config_but_a_release_hash_does():
    openai, gelu = config_of("ViT-B/32"), config_of("ViT-B-32")
    config, source = resolve_config(openai.shapes(), None, None, "x")
    assert not config.complete and source.startswith("ambiguous: the shapes fit ViT-B/32 (quick_gelu), ViT-B-32 (gelu)")
    # the hash is asked for only here; the release's hash names OpenAI's model, another hash nothing
    release = registry.get("ViT-B/32").sha256
    assert resolve_config(openai.shapes(), None, None, "x", sha256=lambda: release) == (
        openai, "registry: ViT-B/32 (by its SHA-256)")
    assert not resolve_config(openai.shapes(), None, None, "x", sha256=lambda: "0" * 64)[0].complete
    # a given config decides, either way
    assert resolve_config(openai.shapes(), None, "ViT-B-32", "x") == (gelu, "given: ViT-B-32")
    assert resolve_config(openai.shapes(), None, "ViT-B/32", "x") == (openai, "given: ViT-B/32")
    # but not against the release's own
    with pytest.raises(ConfigError, match="vision.activation gelu but the file's config"):
        resolve_config(openai.shapes(), None, "ViT-B-32", "x", sha256=lambda: release)


def test_the_hash_is_not_asked_where_no_fit_has_one():
    """bigG's shapes fit ViT-bigG-14 and its quickgelu twin, neither with a registered release hash: the
    file's SHA-256 could not decide, so it is never asked for (a conversion would wait for a 10 GB hash)."""
    big = config_of("ViT-bigG-14")
    fits = registry.by_shapes(big.shapes())
    assert len(fits) == 2 and not any(e.sha256 for e in fits)

    def never():
        raise AssertionError("the hash was asked for")
    config, source = resolve_config(big.shapes(), None, None, "x", sha256=never)
    assert not config.complete and source.startswith("ambiguous")
    assert resolve_config(big.shapes(), None, "ViT-bigG-14", "x", sha256=never) == (big, "given: ViT-bigG-14")


def test_a_config_where_nothing_else_says_it():
    config = config_of("ViT-B/32")
    custom = replace(config, vision=replace(config.vision, layers=6))
    assert resolve_config(custom.shapes(), None, custom, "x") == (custom, "given")


def test_layout_detection():
    assert layouts.detect(shape_dict(config_of("RN50"))) == "openai"
    assert layouts.detect(shape_dict(config_of("RN50"), "paddle")) == "paddle"
    with pytest.raises(ConfigError, match="no telltale key"):
        layouts.detect(["fc.weight", "fc.bias"])
    with pytest.raises(ConfigError, match="more than one layout"):
        layouts.detect(["a.attn.in_proj_weight", "b.attn.q_proj.weight", "token_embedding.weight"])


@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_config_of_real_state_dicts_in_both_layouts(name):
    from parity.testing.synthetic import cached_state_dict, numpy_state_dict

    hub = numpy_state_dict(cached_state_dict(name, 0))
    assert layouts.HUB.infer({k: v.shape for k, v in hub.items()}) == config_of(name).shapes()
    plan, _ = layouts.rows.from_hub(hub, layouts.paddle.KEYMAP, "float32")
    paddle_shapes = {k: p.shape for k, p in plan.items()}
    assert layouts.HUB.infer(layouts.paddle.KEYMAP.hub_shapes(paddle_shapes)) == config_of(name).shapes()
    assert np.all([p.dtype == np.float32 for p in plan.values() if p.dtype.kind == "f"])
