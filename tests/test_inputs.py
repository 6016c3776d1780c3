"""Tokenizer and preprocessing: parity's framework-neutral inputs against the official recipe."""
import ast
import importlib.util
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from parity import preprocess, tokenize
from parity.harness.inputs import MEAN, SAMPLES, STD, crop_box, resized_size, sample_set
from parity.testing.official import official_dir
from parity.text.bpe import default_tokenizer

CORPUS = [
    "a photo of a cat", "A PHOTO OF A DOG.", "", "   lots   of\t\nwhitespace  ", "diagram", "x",
    "It's a dog's life, isn't it? We'll see; they'd've known.", "naïve café déjà vu — señor", "Ünïcödé ñ ß ø å",
    "日本語のテキスト", "中文字符测试", "emoji 🐱🐶 and ✨sparkles✨", "numbers 3.14159 and 1,000,000 and 2024",
    "html &amp; entities &lt;b&gt; &#39;quoted&#39; &amp;amp;", "punctuation!!! ... ??? --- ((( ))) @#$%^&*",
    "mojibake: cafÃ© SchrÃ¶dinger", "<|startoftext|> special <|endoftext|> tokens", "tab\tseparated\tvalues",
    "URL https://example.com/a_b-c?d=e&f=g", "CamelCaseWordsAndsnake_case_words", "Ελληνικά και русский текст",
    "a " * 100, "supercalifragilisticexpialidocious antidisestablishmentarianism " * 8,
]


@pytest.fixture(scope="module")
def official():
    """openai/CLIP's SimpleTokenizer and `clip.tokenize`, from the package's files; `clip/__init__` (which
    imports torchvision) is not run: `tokenize` is lifted out of clip/clip.py's source by its syntax tree."""
    spec = importlib.util.spec_from_file_location("official_simple_tokenizer", official_dir() / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = module.SimpleTokenizer()
    tree = ast.parse((official_dir() / "clip.py").read_text())
    func = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "tokenize")
    namespace = {"torch": torch, "packaging": __import__("packaging.version"), "_tokenizer": tokenizer,
                 "Union": typing.Union, "List": typing.List}
    exec(compile(ast.Module([func], []), "clip/clip.py", "exec"), namespace)
    return tokenizer, namespace["tokenize"]


def test_bpe_matches_the_official_tokenizer(official):
    tokenizer, _ = official
    ours = default_tokenizer()
    for text in CORPUS:
        assert ours.encode(text) == tokenizer.encode(text), text
        ids = ours.encode(text)
        assert ours.decode(ids) == tokenizer.decode(ids), text
    assert ours.encoder == tokenizer.encoder and ours.start == 49406 and ours.end == 49407


def test_tokenize_follows_clip_tokenize(official):
    _, clip_tokenize = official
    short = [t for t in CORPUS if len(tokenize_ids(t)) <= 77]
    np.testing.assert_array_equal(tokenize(short), clip_tokenize(short).numpy())
    assert tokenize(short).dtype == np.int64
    # truncate: cut to the context, <|endoftext|> last
    np.testing.assert_array_equal(tokenize(CORPUS, truncate=True), clip_tokenize(CORPUS, truncate=True).numpy())
    long = tokenize(CORPUS[-1], truncate=True)[0]
    assert long[0] == 49406 and long[-1] == 49407 and (long != 0).all()
    with pytest.raises(RuntimeError):
        clip_tokenize(CORPUS[-1])
    with pytest.raises(ValueError, match="more than the context length 77"):
        tokenize(CORPUS[-1])
    # a shorter context, as some CLIP variants use
    np.testing.assert_array_equal(tokenize(short[:5], context_length=16, truncate=True),
                                  clip_tokenize(short[:5], context_length=16, truncate=True).numpy())
    # by hand: start, "a"=320, "photo"=1125, "of"=539, "a", "cat"=2368, end, zeros
    assert tokenize("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


def tokenize_ids(text):
    return [0, *default_tokenizer().encode(text), 0]


def test_resize_and_crop_follow_torchvision_rounding():
    assert resized_size(640, 480, 224) == (298, 224)  # int(224 * 640 / 480) = int(298.67)
    assert resized_size(480, 640, 224) == (224, 298)
    assert resized_size(224, 224, 224) == (224, 224)
    assert resized_size(1000, 3, 224) == (74666, 224)  # int(74666.67)
    assert resized_size(300, 300, 336) == (336, 336)
    assert crop_box(298, 224, 224) == (37, 0, 261, 224)
    assert crop_box(225, 224, 224) == (0, 0, 224, 224)  # round(0.5) == 0: half to even, as torchvision
    assert crop_box(227, 224, 224) == (2, 0, 226, 224)  # round(1.5) == 2
    assert crop_box(224, 229, 224) == (0, 2, 224, 226)  # round(2.5) == 2


def normalized(value_0_255, channel):
    return (np.float32(value_0_255) / np.float32(255) - MEAN[channel]) / STD[channel]


def test_pixels_of_a_solid_image():
    out = preprocess(Image.new("RGB", (300, 200), (255, 0, 128)), 224)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    # worked by hand: (1 - 0.48145466) / 0.26862954 = 1.93033...; (0 - 0.4578275) / 0.26130258 = -1.75209...
    assert out[0] == pytest.approx(1.9303361, abs=1e-6)
    assert out[1] == pytest.approx(-1.7520971, abs=1e-6)
    assert out[2] == pytest.approx((128 / 255 - 0.40821073) / 0.27577711, abs=1e-6)


def test_crop_takes_the_centre_and_no_resize_when_the_short_side_fits():
    # red = column index, green = row index: each output pixel names the source pixel it came from
    width, height = 230, 224
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x, y, np.full_like(x, 7)], axis=-1).astype(np.uint8)
    out = preprocess(Image.fromarray(pixels), 224)
    left = 3  # round((230 - 224) / 2)
    assert out[0, 0, 0] == normalized(left, 0) and out[0, 0, 223] == normalized(left + 223, 0)
    assert out[1, 0, 5] == normalized(0, 1) and out[1, 223, 5] == normalized(223, 1)
    assert np.all(out[2] == normalized(7, 2))
    # the exact float32 arithmetic of ToTensor + Normalize
    np.testing.assert_array_equal(out[0, 10], normalized(np.arange(left, left + 224), 0))


def test_resize_is_pil_bicubic_then_centre_crop():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))  # 400 x 300
    expected = source.resize((298, 224), Image.BICUBIC).crop((37, 0, 261, 224))
    got = preprocess(source, 224)
    want = (np.asarray(expected, np.float32).transpose(2, 0, 1) / np.float32(255) - MEAN[:, None, None]) / STD[:, None, None]
    np.testing.assert_array_equal(got, want)


def test_grey_and_transparent_images_become_rgb(tmp_path):
    grey = preprocess(Image.new("L", (224, 224), 100), 224)
    assert [grey[c, 0, 0] for c in range(3)] == [normalized(100, c) for c in range(3)]
    rgba = preprocess(Image.new("RGBA", (224, 224), (10, 20, 30, 0)), 224)
    assert [rgba[c, 5, 5] for c in range(3)] == [normalized(v, c) for c, v in enumerate((10, 20, 30))]
    path = tmp_path / "a.png"
    Image.new("RGB", (250, 260), (1, 2, 3)).save(path)
    assert preprocess(path, 224).shape == (3, 224, 224)  # a path works as well as an image


def test_the_sample_set():
    shots = sample_set(224)
    assert shots.names == list(SAMPLES) and len(shots.names) == 8
    assert shots.images.shape == (8, 3, 224, 224) and shots.images.dtype == np.float32
    assert shots.tokens.shape == (8, 77) and (shots.tokens[:, 0] == 49406).all()
    # the grey photographs (page, camera, horse) arrive with three equal channels before normalisation
    camera = shots.images[shots.names.index("camera")]
    np.testing.assert_allclose(camera[0] * STD[0] + MEAN[0], camera[1] * STD[1] + MEAN[1], atol=1e-6)
