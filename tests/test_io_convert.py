"""`parity convert` on checkpoints in every format, made the way their own tools make them.

The official release format is a TorchScript archive of the traced openai/CLIP model (fp16 set cast
after tracing, three int64 buffers); the others come from `torch.save`, `paddle.save` and safetensors
directly, wrapped the way fine-tuning code wraps them. Nothing here goes through parity's writers to
make a source.
"""
import gc
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import parity
from parity import layouts
from parity.io.convert import convert
from parity.harness.gate import run_paddle, run_torch
from parity.harness.inputs import canonical_inputs
from parity.models.frameworks import import_paddle
from parity.models.build import paddle_model
from parity.testing.official import build_official
from parity.testing.synthetic import cached_state_dict, release_archive
from conftest import config_of, ALL, FAST

TARGETS = (("paddle", None), ("torch", None), ("safetensors", "torch"), ("safetensors", "paddle"))
NATIVE = ("state_dict.pt", "wrapped.pt", "paddle.pdparams", "wrapped.pdparams", "torch.safetensors",
          "paddle.safetensors")


def _suffix(to, layout):
    return {"paddle": ".pdparams", "torch": ".pt"}.get(to, f".{layout}.safetensors")


def _reference(archive):
    """The archive's state dict as torch itself reads it (torch.jit.load), as numpy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return {k: v.numpy() for k, v in torch.jit.load(str(archive)).state_dict().items()}


def _make_native(folder, variant):
    """Every non-TorchScript source format, written by torch / paddle / safetensors themselves."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    paddle = import_paddle()
    state = cached_state_dict(variant)
    torch.save(state, folder / "state_dict.pt")
    # Chinese-CLIP saves {'epoch', 'step', 'name', 'state_dict': DDP model's state dict, 'optimizer'}
    torch.save({"epoch": 3, "step": 1200, "name": "finetune", "state_dict": {f"module.{k}": v for k, v in state.items()}},
               folder / "wrapped.pt")
    save_torch({k: v.contiguous() for k, v in state.items()}, folder / "torch.safetensors")
    psd, _ = layouts.to_layout({k: v.numpy() for k, v in state.items()}, "paddle")
    model = paddle_model(psd, config_of(variant))
    paddle.save(model.state_dict(), str(folder / "paddle.pdparams"))  # with Paddle's own name table
    paddle.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 9},
                str(folder / "wrapped.pdparams"))
    save_numpy({k: np.ascontiguousarray(v) for k, v in psd.items()}, folder / "paddle.safetensors")
    del model, psd, state
    gc.collect()


def _assert_bit_identical(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), (k, g.dtype, w.dtype, g.shape, w.shape)
        assert g.tobytes() == w.tobytes(), k


@pytest.fixture(scope="module", params=[pytest.param(v, id=v, marks=() if v in FAST else pytest.mark.slow)
                                        for v in ALL])
def variant_files(request, tmp_path_factory):
    """(variant, folder, TorchScript archive, its state dict, the official model's canonical logits on the
    fast models, else None); in the folder, the archive converted to a.pdparams and that back to a.pt. One
    variant on disk at a time."""
    variant = request.param
    folder = tmp_path_factory.mktemp(variant.replace("/", "-").replace("@", "-"))
    archive = release_archive(variant)
    convert(archive, "paddle", folder / "a.pdparams")
    convert(folder / "a.pdparams", "torch", folder / "a.pt")
    reference = _reference(archive)
    logits = None
    if variant in FAST:  # every variant's official outputs: test_models, on these very tensors (seed 0)
        config = config_of(variant)
        image, text = canonical_inputs(config.vision.image_size)
        official = build_official({k: torch.from_numpy(v) for k, v in reference.items()})
        logits = run_torch(official, image, text).logits  # the official model's canonical logits, once
        del official
        gc.collect()
    yield variant, folder, archive, reference, logits
    shutil.rmtree(folder, ignore_errors=True)
    gc.collect()


def test_release_archive_reads_as_torch_reads_it(variant_files):
    variant, _, archive, reference, _ = variant_files
    ck = parity.load(archive)
    assert (ck.format, ck.layout, ck.name) == ("torchscript", "openai", variant)
    assert list(ck.state_dict) == list(reference)  # torch's own order, too
    _assert_bit_identical(ck.state_dict, reference)
    dtypes = {str(v.dtype) for v in ck.state_dict.values()}
    assert dtypes == {"float16", "float32", "int64"}  # the release's mix, kept
    assert [int(ck.state_dict[k]) for k in layouts.HUB.ARCHIVE_ENTRIES] == [
        config_of(variant).vision.image_size, 77, 49408]


def test_round_trips_are_bit_identical(variant_files):
    """torch -> paddle -> torch (made by the fixture) and torch -> safetensors -> paddle -> torch."""
    variant, folder, archive, reference, _ = variant_files
    _assert_bit_identical(torch_numpy(folder / "a.pt"), reference)

    convert(archive, "safetensors", folder / "b.safetensors")
    convert(folder / "b.safetensors", "paddle", folder / "b.pdparams")
    convert(folder / "b.pdparams", "torch", folder / "b.pt")
    _assert_bit_identical(torch_numpy(folder / "b.pt"), reference)
    for name in ("b.safetensors", "b.pdparams", "b.pt"):
        (folder / name).unlink()


def torch_numpy(path):
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def test_converted_pdparams_gives_the_official_logit(variant_files):
    """Plain paddle.load + set_state_dict into parity's Paddle model takes exactly the tensors the hub maps
    to, bit for bit; on the fast models it computes the official model's logit here. (On every model,
    test_models holds parity's Paddle model to the official model on these very tensors, seed 0.)"""
    variant, folder, _, reference, want = variant_files
    config = config_of(variant)
    paddle = import_paddle()
    from parity.models.paddle_clip import CLIP
    model = CLIP(config)
    missing, unexpected = model.set_state_dict(paddle.load(str(folder / "a.pdparams")))
    assert missing == [] and unexpected == ["parity@@extras"]  # parity's record, documented
    mapped, _ = layouts.to_layout(reference, "paddle")
    _assert_bit_identical({k: v.numpy() for k, v in model.state_dict().items()},
                          {k: v for k, v in mapped.items() if k not in layouts.HUB.ARCHIVE_ENTRIES})
    if want is not None:
        image, text = canonical_inputs(config.vision.image_size)
        got = run_paddle(model.eval(), image, text).logits
        assert abs(float(got[0, 0]) - float(want[0, 0])) <= 1e-4


def test_converted_pt_loads_in_official_build_model(variant_files):
    """openai/CLIP's build_model takes the converted .pt strictly, the release's tensors in float32; on the
    fast models it computes the official logit bit for bit."""
    variant, folder, _, reference, want = variant_files
    state = torch.load(folder / "a.pt", weights_only=True)  # plain state dict, safe to load
    model = build_official(state)  # load_state_dict(strict=True) inside; float32 compute
    held = {k: v.numpy() for k, v in model.state_dict().items()}
    _assert_bit_identical(held, {k: v.astype(held[k].dtype) for k, v in reference.items() if k in held})
    if want is not None:
        image, text = canonical_inputs(config_of(variant).vision.image_size)
        assert np.array_equal(run_torch(model, image, text).logits, want)


@pytest.mark.parametrize("variant", FAST)
def test_every_format_to_every_other(variant, tmp_path):
    """Sources made by torch / paddle / safetensors themselves, each format to every target, values kept."""
    _make_native(tmp_path, variant)
    sources = [release_archive(variant)] + [tmp_path / n for n in NATIVE if not n.startswith("wrapped")]
    expected = {k: v.float().numpy() for k, v in cached_state_dict(variant).items()
                if not k.endswith("num_batches_tracked")}
    source_dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in cached_state_dict(variant).items()}
    for source in sources:
        for to, layout in TARGETS:
            out = tmp_path / f"out-{source.stem}{_suffix(to, layout)}"
            # (a plain state dict of ViT-B/32 fits open_clip's GELU ViT-B-32 too: the config is given)
            result = convert(source, to, out, layout=layout, config=variant)  # reloads and compares every tensor
            assert result.source.name == variant
            written = result.saved.tensors
            if result.saved.layout == "paddle":
                written = layouts.to_hub(written, "paddle")[0]
                if to == "paddle":
                    assert {str(v.dtype) for v in result.saved.tensors.values()} == {"float32"}
            elif result.source.layout == "openai":  # a hub-layout source keeps its dtype mix
                assert {k: str(v.dtype) for k, v in written.items() if k in source_dtypes} == source_dtypes
            for k, v in expected.items():
                assert np.array_equal(written[k].astype(np.float32), v), (source.name, to, layout, k)
            out.unlink()
    # wrapped files: unwrapped, said so, and converted like any other
    result = convert(tmp_path / "wrapped.pt", "paddle", tmp_path / "w.pdparams")
    assert result.source.unwrapped == ["wrapper 'state_dict' (not read beside it: epoch, name, step)",
                                       "prefix 'module.'"]
    assert "stripped wrapper 'state_dict'" in result.summary()
    result = convert(tmp_path / "wrapped.pdparams", "torch", tmp_path / "w.pt")
    assert result.source.unwrapped == ["wrapper 'state_dict' (not read beside it: epoch)", "prefix 'model.'"]
    for k, v in expected.items():
        assert np.array_equal(result.saved.tensors[k].astype(np.float32), v), k
    native = parity.load(tmp_path / "paddle.pdparams")
    assert native.layout == "paddle" and native.record is None
    assert "dropped Paddle's StructuredToParameterName@@ name table" in native.notes


def test_dtype_option_and_default_output_name(tmp_path):
    archive = tmp_path / "RN50.pt"
    shutil.copy(release_archive("RN50"), archive)
    result = convert(archive, "paddle")
    assert result.saved.path == tmp_path / "RN50.pdparams"
    convert(archive, "paddle", tmp_path / "half.pdparams", dtype="float16")
    convert(archive, "paddle", tmp_path / "keep.pdparams", dtype="keep")
    convert(archive, "torch", tmp_path / "f32.pt", dtype="float32")
    kinds = {name: {str(v.dtype) for v in parity.load(tmp_path / name).state_dict.values()}
             for name in ("half.pdparams", "keep.pdparams", "f32.pt")}
    assert kinds == {"half.pdparams": {"float16"}, "keep.pdparams": {"float16", "float32"},
                     "f32.pt": {"float32", "int64"}}
    # the record brings the release's dtypes back from a file kept in them; float16 is lossy for the
    # float32 tensors, so from there only the values that float16 holds come back
    reference = _reference(archive)
    convert(tmp_path / "keep.pdparams", "torch", tmp_path / "back.pt")
    _assert_bit_identical(torch_numpy(tmp_path / "back.pt"), reference)
    convert(tmp_path / "half.pdparams", "torch", tmp_path / "half.pt")
    half = torch_numpy(tmp_path / "half.pt")
    assert {k: v.dtype for k, v in half.items()} == {k: v.dtype for k, v in reference.items()}
    assert all(np.array_equal(half[k], v.astype(np.float16).astype(v.dtype) if v.dtype.kind == "f" else v)
               for k, v in reference.items())


def test_load_api_states_its_layout(tmp_path):
    ck = parity.load(release_archive("ViT-B/32"), layout="paddle")
    assert ck.layout == "paddle" and ck.config == config_of("ViT-B/32")
    assert {k: v.shape for k, v in ck.state_dict.items()} == \
        layouts.paddle.KEYMAP.layout_shapes(layouts.HUB.shapes(ck.config))
    saved = parity.save(ck, tmp_path / "v.safetensors", layout="paddle")
    again = parity.load(saved.path)
    assert again.layout == "paddle" and again.provenance["model"] == "ViT-B/32"
    assert again.provenance["source"]["sha256"] == ck.sha256


def test_conversion_imports_no_framework(tmp_path):
    """Reading, converting to Paddle and checking the result need neither torch nor paddle."""
    code = ("import sys; import parity; "
            f"parity.convert({str(release_archive('RN50'))!r}, 'paddle', {str(tmp_path / 'x.pdparams')!r}); "
            f"parity.convert({str(tmp_path / 'x.pdparams')!r}, 'safetensors', {str(tmp_path / 'x.safetensors')!r}); "
            "print(sorted(m for m in ('torch', 'paddle') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""
