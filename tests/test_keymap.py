import numpy as np
import pytest

from parity import keymap
from parity.keymap import ROWS, StateDictError, paddle_row, paddle_shapes, to_paddle, to_torch, torch_row, torch_shapes
from parity.synthetic import cached_state_dict, numpy_state_dict
from parity.variants import VARIANTS, get_config
from conftest import assert_same_tensors, variant_params


def test_every_row_maps_one_to_one_on_real_key_sets():
    used = set()
    for config in VARIANTS.values():
        torch_keys = torch_shapes(config, archive_entries=True)
        produced = {}
        for key in torch_keys:
            row, _ = torch_row(key)
            used.add(row)
            for pkey in keymap.paddle_keys_for(key):
                assert pkey not in produced, f"{pkey} produced by {produced.get(pkey)} and {key}"
                produced[pkey] = key
                # read backwards, the Paddle key finds the same row and comes home to the same torch key
                back_row, groups = paddle_row(pkey)
                assert back_row == row
                assert keymap._fill(row.torch, {k: v for k, v in groups.items() if k != "qkv"}) == key
        assert set(produced) == set(paddle_shapes(config))
    assert used == set(ROWS), f"rows never used: {set(ROWS) - used}"


def test_rows_are_few_and_never_unrolled_per_layer():
    assert len(ROWS) <= 16
    assert not any(ch.isdigit() for row in ROWS for ch in row.torch)


@pytest.mark.parametrize("variant,seed", variant_params())
def test_expected_shapes_match_both_models(variant, seed):
    from parity.loading import import_paddle
    from parity.models import paddle_clip, torch_clip
    from parity.official import official_clip

    import_paddle()
    config = get_config(variant)
    assert {k: tuple(v.shape) for k, v in torch_clip.CLIP(config).state_dict().items()} == torch_shapes(config)
    official = official_clip(config)
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == torch_shapes(config)
    del official
    assert {k: tuple(v.shape) for k, v in paddle_clip.CLIP(config).state_dict().items()} == paddle_shapes(config)


@pytest.mark.parametrize("variant,seed", variant_params())
def test_round_trip_is_bit_identical(variant, seed):
    source = numpy_state_dict(cached_state_dict(variant, seed))
    # the official archives' int entries ride along too
    config = get_config(variant)
    source.update({k: np.array(v, dtype=np.int64) for k, v in
                   zip(keymap.ARCHIVE_ENTRIES, (config.image_resolution, config.context_length, config.vocab_size))})
    for dtype in ("float32", None):
        paddle_sd, extras = to_paddle(source, dtype=dtype)
        assert all(a.dtype == np.float32 for a in paddle_sd.values()) or dtype is None
        back, notes = to_torch(paddle_sd, extras)
        assert notes == []
        assert_same_tensors(back, source)


def test_cast_records_source_dtypes_and_extras_serialise():
    source = numpy_state_dict(cached_state_dict("ViT-B/32", 0))
    paddle_sd, extras = to_paddle(source)
    assert extras.dtypes["visual.proj"] == "float16" and "visual.ln_pre.weight" not in extras.dtypes
    restored = keymap.Extras.from_dict(extras.to_dict())
    assert_same_tensors(to_torch(paddle_sd, restored)[0], source)


def test_without_extras_defaults_are_restored_and_said():
    source = numpy_state_dict(cached_state_dict("RN50", 0))
    paddle_sd, _ = to_paddle(source)
    back, notes = to_torch(paddle_sd, None)
    assert len(notes) == 1 and "num_batches_tracked = 0" in notes[0]
    assert sorted(back) == sorted(source)
    assert back["visual.bn1.num_batches_tracked"].dtype == np.int64 and back["visual.bn1.num_batches_tracked"] == 0
    assert back["visual.conv1.weight"].dtype == np.float32  # no record of the source dtype
    np.testing.assert_array_equal(back["visual.conv1.weight"], source["visual.conv1.weight"].astype(np.float32))
    with_archive, notes = to_torch(paddle_sd, None, archive_entries=True)
    assert with_archive["input_resolution"] == 224 and with_archive["vocab_size"] == 49408


def test_layout_specifics():
    source = numpy_state_dict(cached_state_dict("RN50", 0))
    p, _ = to_paddle(source)
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


@pytest.mark.parametrize("direction", ["torch", "paddle"])
def test_missing_extra_and_misshaped_tensors_are_named(rn50, direction):
    sd = dict(rn50) if direction == "torch" else to_paddle(rn50)[0]
    convert = (lambda d: to_paddle(d)) if direction == "torch" else (lambda d: to_torch(d))
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
        to_paddle(broken)


def test_shapes_of_another_variant_are_refused(rn50):
    with pytest.raises(StateDictError, match="shapes are those of RN50, not of ViT-B/32"):
        to_paddle(rn50, get_config("ViT-B/32"))
