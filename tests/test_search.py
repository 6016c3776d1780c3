"""`parity verify CK --images DIR --texts FILE`: the user's own images and captions through both frameworks,
and text -> image / image -> text search compared query by query; hostile images named in one line."""
from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import CAPTIONS, junit_cases, user_data
from parity.cli import main
from parity.config import registry
from parity.errors import ParityError
from parity.harness import junit, search
from parity.harness.report import LayerDiagnosis
from parity.harness.gate import Outputs
from parity.io.convert import convert
from parity.testing.synthetic import release_archive

PERTURBED = "visual.layer3.2.bn2.weight"  # one BN gain in RN50's vision tower, x 1.05 in the Paddle copy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    shutil.copyfile(release_archive("RN50"), folder / "RN50.pt")
    convert(folder / "RN50.pt", "paddle", folder / "RN50.pdparams")
    with open(folder / "RN50.pdparams", "rb") as f:
        content = pickle.load(f)  # our own file: plain pickle is fine here
    content[PERTURBED] = content[PERTURBED] * np.float32(1.05)
    with open(folder / "perturbed.pdparams", "wb") as f:
        pickle.dump(content, f, protocol=4)
    images, texts = user_data(folder)
    return {"pt": folder / "RN50.pt", "perturbed": folder / "perturbed.pdparams", "images": images, "texts": texts}


def verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def test_the_users_data_agrees_and_the_truncated_image_is_named(files, tmp_path):
    result = verify(files["pt"], "--images", files["images"], "--texts", files["texts"], "--skip-bad-images",
                    "--report-dir", tmp_path, "--junit", tmp_path / "j.xml", "--batch", "4")
    assert result.exit_code == 0, result.output
    assert f"skipped: {files['images'] / 'truncated.png'}: not a readable image" in result.stderr
    assert "your 19 images × 10 captions, 1 unreadable image skipped" in result.stdout
    found = json.loads((tmp_path / "RN50.json").read_text())["search"]
    assert len(found["images"]) == 19 and "gray.png" in found["images"] and found["captions"] == 10
    assert [name for name, _ in found["skipped"]] == ["truncated.png"] and found["passed"]
    for direction, queries in (("text->image", 10), ("image->text", 19)):
        r = found["rankings"][direction]
        assert (r["queries"], r["top1_agreement"], r["first_differing"]) == (queries, 1.0, None), r
        assert r["min_rank_correlation"] > 0.99
    assert "photos" not in json.loads((tmp_path / "RN50.json").read_text())  # the user's data in their place
    cases = junit_cases(tmp_path / "j.xml")
    assert {c for _, c in cases} >= {"search image_features", "search text_features", "search text->image",
                                     "search image->text"} and set(cases.values()) == {None}
    assert "## Your images and captions" in (tmp_path / "RN50.md").read_text()


def test_an_unreadable_image_is_refused_by_default(files, tmp_path, monkeypatch):
    from parity.harness import run as harness

    monkeypatch.setattr(harness, "torch_side", lambda *a, **k: pytest.fail("a model ran"))  # refused before
    result = verify(files["pt"], "--images", files["images"], "--texts", files["texts"], "--report-dir", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {files['images'] / 'truncated.png'}: not a readable image (image file is truncated)"
    assert not (tmp_path / "RN50.json").exists()


def test_a_perturbed_bn_fails_on_the_users_data_and_names_the_layer(files, tmp_path):
    result = verify(files["pt"], files["perturbed"], "--images", files["images"], "--texts", files["texts"],
                    "--skip-bad-images", "--report-dir", tmp_path, "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1, result.output
    assert "first module beyond its bound: visual.layer3.2.bn2" in result.output
    found = json.loads((tmp_path / "RN50.json").read_text())["search"]
    assert not found["passed"] and not found["differences"]["image_features"]["passed"]
    assert found["differences"]["text_features"]["passed"]  # the text tower is untouched
    failed = {c: m for (_, c), m in junit_cases(tmp_path / "j.xml").items() if m}
    assert "search image_features" in failed and "search text_features" not in failed
    assert all("first diverging layer: visual.layer3.2.bn2" in m for m in failed.values())


def test_a_fault_the_canonical_pair_cannot_show_is_diagnosed_on_the_users_worst_image(files, tmp_path):
    """ViT-B/32's patch convolution with a zero-sum change to each output channel's kernel, in the Paddle
    copy: on the canonical image (a constant, no padding) every patch sums to what it summed to, so the
    canonical pair agrees; on the user's images it does not. The layer diagnosis then runs on the user's
    image (and caption) that part the frameworks most, and names the convolution there."""
    folder = tmp_path / "vit"
    folder.mkdir()
    convert(release_archive("ViT-B/32"), "paddle", folder / "ViT-B-32.pdparams")
    with open(folder / "ViT-B-32.pdparams", "rb") as f:
        content = pickle.load(f)  # our own file: plain pickle is fine here
    weight = content["visual.conv1.weight"]  # (768, 3, 32, 32)
    change = np.random.default_rng(2).normal(0, 0.3 * float(weight.std()), weight.shape)
    change -= change.mean(axis=(1, 2, 3), keepdims=True)  # each output channel's kernel changes by a sum of 0
    content["visual.conv1.weight"] = (weight + change).astype(np.float32)
    with open(folder / "perturbed.pdparams", "wb") as f:
        pickle.dump(content, f, protocol=4)
    result = verify(release_archive("ViT-B/32"), folder / "perturbed.pdparams", "--images", files["images"],
                    "--texts", files["texts"], "--skip-bad-images", "--report-dir", tmp_path, "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "ViT-B-32.json").read_text())
    assert all(d["passed"] for d in report["differences"].values())  # the canonical pair cannot show it
    assert not report["search"]["differences"]["image_features"]["passed"]
    layers = report["layers"]
    assert layers["inputs"].startswith("your image '") and layers["first_divergence"] == "visual.conv1", layers["inputs"]
    failed = {c: m for (_, c), m in junit_cases(tmp_path / "j.xml").items() if m}
    assert "search image_features" in failed and all(f"visual.conv1 (on {layers['inputs']})" in m for m in failed.values())
    assert f"compared on {layers['inputs']}" in (tmp_path / "ViT-B-32.md").read_text()
    assert f"first module beyond its bound: visual.conv1 (on {layers['inputs']})" in result.output


def test_a_ranking_changed_on_purpose_names_the_first_query_it_changes():
    """Paddle's text features for captions 3 and 7 swapped: text -> image query 3 is the first whose ranking
    differs, and every image's ranking of the captions changes."""
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(12, 32)), rng.normal(size=(10, 32))
    swapped = text.copy()
    swapped[[3, 7]] = text[[7, 3]]
    images = search.UserImages(None, paths=[])
    images.paths = [type("P", (), {"name": f"img{i:02d}.png"})() for i in range(12)]
    data = search.UserSet(images, list(CAPTIONS), np.zeros((10, 77), np.int64), None)
    found = search.compare_search(data, Outputs(None, image, text), Outputs(None, image, swapped), 0.99999, 5)
    t2i = found.rankings["text->image"]
    assert (t2i.first_differing_index, t2i.first_differing) == (3, CAPTIONS[3]) and not t2i.passed
    assert t2i.top1_agreement == 0.8 and not found.passed  # queries 3 and 7 (ties aside) find other images
    layers = LayerDiagnosis("visual.conv1", 1, [], [], "your image 'img03.png' and caption #4")
    failures = {c.name: c.failure for c in junit.search_cases(found, layers) if c.failure}
    assert CAPTIONS[3] in failures["search text->image"] and "#4" in failures["search text->image"]
    assert "first diverging layer: visual.conv1 (on your image 'img03.png' and caption #4)" in failures["search text->image"]
    assert search.rank("x", image @ text.T, image @ text.T, [str(i) for i in range(12)], 5).first_differing is None


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _bomb() -> bytes:
    """A 9000 x 9000 grayscale PNG of zeros: 81 MB of pixels in some 80 kB."""
    z = zlib.compressobj(9)
    row = b"\x00" * 9001  # filter byte and 9000 pixels
    data = b"".join(z.compress(row) for _ in range(9000)) + z.flush()
    return _png(9000, 9000, data)


@pytest.mark.parametrize("name, data, says", [
    ("header.png", _png(100_000, 100_000), "exceeds limit"),  # Pillow's own bound, before any pixel
    ("bomb.png", _bomb(), "its header declares 9000×9000 pixels"),
    ("empty.jpg", b"", "not a readable image"),
    ("text.png", b"not an image at all\n", "not a readable image"),
    ("cut.jpg", None, "not a readable image"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(("png", "jpg")) else "")
def test_a_hostile_image_is_one_line_naming_it(tmp_path, name, data, says):
    if data is None:  # a JPEG cut short
        from PIL import Image
        Image.fromarray(np.full((64, 64, 3), 9, np.uint8)).save(tmp_path / "whole.jpg")
        data = (tmp_path / "whole.jpg").read_bytes()[:300]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(search.BadImage) as e:
        search.decode(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}: ") and says in str(e.value) and "\n" not in str(e.value)


def test_memory_is_bounded_by_the_batch(files, monkeypatch):
    """The folder is decoded a batch at a time: when the first batch comes, only its images were read."""
    decoded = []
    real = search.decode
    monkeypatch.setattr(search, "decode", lambda path: decoded.append(path.name) or real(path))
    images = search.UserImages.of(files["images"], skip_bad=True)  # each checked once, kept by name only
    assert len(decoded) == 20 and len(images.paths) == 19 and images.skipped[0][0] == "truncated.png"
    decoded.clear()
    batches = images.batches(3, lambda image: np.zeros((3, 8, 8), np.float32))
    assert next(batches).shape == (3, 3, 8, 8) and len(decoded) == 3
    assert [b.shape[0] for b in batches] == [3] * 5 + [1]  # 19 readable images in batches of 3


def test_bad_captions_and_bad_folders_are_one_line(tmp_path, files):
    config = registry.get("RN50").config
    cases = {"latin1.txt": ("café\n".encode("latin-1"), "not UTF-8 text"), "blank.txt": (b"\n \n", "holds no caption"),
             "long.txt": (("word " * 200).encode(), "caption 1 cannot be tokenized")}
    for name, (data, says) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ParityError, match=says):
            search.user_set(files["images"], tmp_path / name, config)
    (tmp_path / "none").mkdir()
    with pytest.raises(ParityError, match="holds no image"):
        search.user_set(tmp_path / "none", files["texts"], config)
    result = verify(files["pt"], "--images", files["images"])
    assert result.exit_code == 2 and "a folder of images and a file of captions together" in result.output
