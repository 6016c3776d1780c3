"""The layouts and their rows: one-to-one on real key sets, both models' state dicts, bit-exact round trips."""
import re
from dataclasses import replace

import numpy as np
import pytest

from parity import layouts
from parity.config import registry
from parity.layouts import StateDictError
from parity.io.tensors import Record
from parity.testing.synthetic import cached_state_dict, numpy_state_dict
from conftest import assert_same_tensors, config_of, variant_params

SPOKES = [name for name in layouts.LAYOUTS if name != layouts.HUB.NAME]


@pytest.mark.parametrize("name", SPOKES)
def test_every_row_maps_one_to_one_on_real_key_sets(name):
    layout = layouts.get(name)
    keymaps = [layout.keymap, *layout.families.values()]  # one per tower family (CLIP's, SigLIP's)
    used = set()
    for entry in registry.ENTRIES.values():
        if not layouts.holds(layout, entry.config):
            continue
        keymap = layout.rows_for(entry.config)
        hub_keys = layouts.HUB.shapes(entry.config, archive_entries=True)
        produced = {}
        for key in hub_keys:
            row, _ = keymap.hub_row(key)
            used.add(row)
            parts = keymap.hub_keys(key)  # a fused row: its parts make one layout tensor, produced at the first
            if key != parts[0]:
                assert all(p in hub_keys for p in parts) and keymap.layout_keys(key) == keymap.layout_keys(parts[0])
                continue
            for lkey in keymap.layout_keys(key):
                assert lkey not in produced, f"{lkey} produced by {produced.get(lkey)} and {key}"
                produced[lkey] = key
                # read backwards, the layout key finds the same row and comes home to the same hub key
                back_row, groups = keymap.layout_row(lkey)
                assert back_row == row
                assert keymap.hub_key(lkey) == key
        assert set(produced) == set(keymap.layout_shapes(layouts.HUB.shapes(entry.config)))
        # and the key set, read back, finds its own family's rows
        assert layout.rows_for(set(produced)) is keymap
    every = {row for keymap in keymaps for row in keymap.rows}
    assert used == every, f"rows never used: {every - used}"


@pytest.mark.parametrize("name", SPOKES)
def test_rows_are_few_and_never_unrolled_per_layer(name):
    layout = layouts.get(name)
    rows = [row for keymap in (layout.keymap, *layout.families.values()) for row in keymap.rows]
    assert not any(re.search(r"\.\d+(\.|$)", pattern) for row in rows for pattern in (row.hub, row.layout or ""))
    # the rows a model uses do not follow its depth: each model the layout holds, cut to one layer per stack
    # and grown to three times its depth, uses the same rows as itself; so one-layer models use every row
    # (a row stated for some layers would be used only from that depth on)
    one_layer = set()
    for entry in registry.ENTRIES.values():
        if not layouts.holds(layout, entry.config):
            continue
        used = {label: {layout.rows_for(entry.config).hub_row(key)[0] for key in
                        layouts.HUB.shapes(_deepened(entry.config, depth), archive_entries=True)}
                for label, depth in DEPTHS.items()}
        assert used["one layer"] == used["its own"] == used["three times"], \
            (entry.name, {label: len(rows_used) for label, rows_used in used.items()})
        one_layer |= used["one layer"]
    assert one_layer == set(rows), f"rows only deeper models use: {set(rows) - one_layer}"


DEPTHS = {"one layer": lambda n: 1, "its own": lambda n: n, "three times": lambda n: 3 * n}


def _deepened(config, depth):
    """`config` with every stack of layers (both towers', each of a ResNet's four stages) `depth(n)` deep."""
    v, t = config.vision, config.text  # a tower alone has one of them
    layers = v and (tuple(map(depth, v.layers)) if isinstance(v.layers, tuple) else depth(v.layers))
    return replace(config, vision=v and replace(v, layers=layers), text=t and replace(t, layers=depth(t.layers)))


@pytest.mark.parametrize("variant,seed", variant_params())
def test_expected_shapes_match_both_models(variant, seed):
    from parity.models.frameworks import import_paddle
    from parity.models import paddle_clip, torch_clip
    from parity.testing.official import official_clip

    import torch

    import_paddle()
    config = config_of(variant)
    hub = layouts.HUB.shapes(config)
    with torch.device("meta"):  # shapes only: no memory, no initialisation (Paddle has no meta device)
        assert {k: tuple(v.shape) for k, v in torch_clip.CLIP(config).state_dict().items()} == hub
        assert {k: tuple(v.shape) for k, v in official_clip(config).state_dict().items()} == hub
    assert {k: tuple(v.shape) for k, v in paddle_clip.CLIP(config).state_dict().items()} == \
        layouts.paddle.KEYMAP.layout_shapes(hub)


@pytest.mark.parametrize("variant,seed", variant_params())
def test_round_trip_is_bit_identical(variant, seed):
    source = numpy_state_dict(cached_state_dict(variant, seed))
    config = config_of(variant)
    # the official archives' int entries ride along too
    source.update({k: np.array(v, dtype=np.int64) for k, v in zip(
        layouts.HUB.ARCHIVE_ENTRIES, (config.vision.image_size, config.text.context_length, config.text.vocab_size))})
    for dtype in ("float32", None):
        paddle_sd, record = layouts.to_layout(source, "paddle", dtype=dtype)
        floats = {str(a.dtype) for a in paddle_sd.values() if a.dtype.kind == "f"}
        assert floats == ({"float32"} if dtype else {"float16", "float32"})  # cast, or the source's mix kept
        back, notes = layouts.to_hub(paddle_sd, "paddle", record)
        assert notes == []
        assert_same_tensors(back, source)


def test_cast_records_source_dtypes_and_the_record_serialises():
    source = numpy_state_dict(cached_state_dict("ViT-B/32", 0))
    paddle_sd, record = layouts.to_layout(source, "paddle")
    assert record.dtypes["visual.proj"] == "float16" and "visual.ln_pre.weight" not in record.dtypes
    restored = Record.from_dict(record.to_dict())
    assert_same_tensors(layouts.to_hub(paddle_sd, "paddle", restored)[0], source)


def test_without_a_record_defaults_are_restored_and_said():
    source = numpy_state_dict(cached_state_dict("RN50", 0))
    paddle_sd, _ = layouts.to_layout(source, "paddle")
    back, notes = layouts.to_hub(paddle_sd, "paddle", None)
    assert len(notes) == 1 and "num_batches_tracked = 0" in notes[0]
    assert sorted(back) == sorted(source)
    assert back["visual.bn1.num_batches_tracked"].dtype == np.int64 and back["visual.bn1.num_batches_tracked"] == 0
    assert back["visual.conv1.weight"].dtype == np.float32  # no record of the source dtype
    np.testing.assert_array_equal(back["visual.conv1.weight"], source["visual.conv1.weight"].astype(np.float32))
    with_archive, notes = layouts.to_hub(paddle_sd, "paddle", None, archive_entries=True)
    assert with_archive["input_resolution"] == 224 and with_archive["vocab_size"] == 49408


def test_paddle_layout_specifics():
    source = numpy_state_dict(cached_state_dict("RN50", 0))
    p, _ = layouts.to_layout(source, "paddle")
    w = source["transformer.resblocks.3.attn.in_proj_weight"].astype(np.float32)  # [3D, D]
    np.testing.assert_array_equal(p["transformer.resblocks.3.attn.k_proj.weight"], w[512:1024].T)
    np.testing.assert_array_equal(p["visual.attnpool.c_proj.weight"], source["visual.attnpool.c_proj.weight"].T)
    np.testing.assert_array_equal(p["visual.bn1._variance"], source["visual.bn1.running_var"])
    assert p["logit_scale"].shape == (1,) and source["logit_scale"].shape == ()
    assert p["text_projection"].shape == source["text_projection"].shape
    assert not any("num_batches_tracked" in k for k in p)


@pytest.fixture(scope="module")
def rn50():
    return numpy_state_dict(cached_state_dict("RN50", 0))


@pytest.mark.parametrize("direction", ["openai", "paddle"])
def test_missing_extra_and_misshaped_tensors_are_named(rn50, direction):
    sd = dict(rn50) if direction == "openai" else layouts.to_layout(rn50, "paddle")[0]
    convert = (lambda d: layouts.to_layout(d, "paddle")) if direction == "openai" else \
        (lambda d: layouts.to_hub(d, "paddle"))
    victim = "visual.layer3.2.conv2.weight"
    broken = {k: v for k, v in sd.items() if k != victim}
    with pytest.raises(StateDictError, match=r"missing: visual\.layer3\.2\.conv2\.weight$"):
        convert(broken)
    with pytest.raises(StateDictError, match=r"unexpected: visual\.head\.weight$"):
        convert({**sd, "visual.head.weight": np.zeros(3, np.float32)})
    with pytest.raises(StateDictError, match=r"mis-shaped: visual\.layer3\.2\.conv2\.weight \[256, 256, 1, 1\] "
                                             r"\(expected \[256, 256, 3, 3\]\)"):
        convert({**sd, victim: np.zeros((256, 256, 1, 1), np.float32)})


def test_several_problems_are_listed_sorted(rn50):
    broken = {k: v for k, v in rn50.items() if k not in ("visual.bn2.bias", "ln_final.bias")}
    broken["zzz"] = broken["aaa"] = np.zeros(1)
    with pytest.raises(StateDictError, match=r"missing: ln_final\.bias, visual\.bn2\.bias; unexpected: aaa, zzz"):
        layouts.to_layout(broken, "paddle")
