"""parity's Chinese-CLIP tokenizer against `cn_clip.clip.tokenize` itself (cn_clip 1.6.0, the oracle), over the
vocabulary its wheel ships. cn_clip imports torchvision: the same test stub as for open_clip stands in."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from parity.text import wordpiece
from parity.errors import ParityError

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
import torchvision_stub  # noqa: E402

torchvision_stub.install()
from cn_clip.clip import tokenize as cn_tokenize  # noqa: E402

CORPUS = [
    "一张猫的照片", "一张照片", "皮卡丘", "杰尼龟在水里", "喷火龙，火焰宝可梦。", "这是一只狗吗？是的！",
    "A photo of a cat", "CLIP: Contrastive Language-Image Pre-training", "naïve café résumé Ångström",
    "混合 mixed 文本 text 123 4.56 %", "全角标点：「你好」，（测试）！？；……——", "ＡＢＣ１２３ｆｕｌｌｗｉｄｔｈ",
    "emoji 🐱🐶🎉 表情 😀", "tabs\tand\nnewlines\r\nand\u3000ideographic space", "zero\u200bwidth\u00a0nbsp",
    "control\x00chars\x07\ufffd here", "URL https://example.com/a_b?c=d&e=f", "unhappiness unaffable xyzzyqwv",
    "日本語のテキストとカタカナ", "한국어 텍스트", "Ελληνικά και Кириллица", "a" * 250, "长" * 80,
    "word " * 60, "", "   ", "ﬁ ligature and Ⅻ numerals", "Straße ǅ İstanbul", "$^`~|\\ symbols <>{}[]",
    "𠀀𪜀 extension ideographs 丽", "ＣＬＩＰ模型在２０２１年发布",
]


def test_the_tokenizer_gives_cn_clips_ids_on_a_varied_corpus():
    want = cn_tokenize(CORPUS).numpy()
    got = wordpiece.tokenize(CORPUS)
    assert got.dtype == np.int64 and got.shape == (len(CORPUS), 52)
    for text, a, b in zip(CORPUS, got, want):
        assert a.tolist() == b.tolist(), text


def test_the_issue_example_and_other_contexts():
    assert wordpiece.tokenize("一张猫的照片")[0, :9].tolist() == [101, 671, 2476, 4344, 4638, 4212, 4275, 102, 0]
    for context in (8, 16, 77):
        assert wordpiece.tokenize(CORPUS, context).tolist() == cn_tokenize(CORPUS, context).tolist()
    long = wordpiece.tokenize("长" * 80)[0]
    assert long[0] == 101 and long[-1] == 102 and (long != 0).all()  # cut to fit, [SEP] kept last


def test_a_vocabulary_file_is_read_and_checked(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n猫\nun\n##aff\n##able\n")
    assert wordpiece.tokenize("猫 unaffable 狗", 8, vocab)[0].tolist() == [2, 4, 5, 6, 7, 1, 3, 0]
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ParityError, match="without \\[CLS\\]"):
        wordpiece.tokenize("a", 8, bad)
    with pytest.raises(ParityError, match="no \\[CLS\\] and \\[SEP\\]"):
        wordpiece.tokenize("a", 1, vocab)


def test_parity_tokenize_picks_the_tokenizer_the_model_needs():
    import parity

    assert parity.tokenize("一张猫的照片", model="cn_clip/RN50").tolist() == wordpiece.tokenize("一张猫的照片").tolist()
    assert parity.tokenize("a photo of a cat", model="ViT-B-32").tolist() == parity.tokenize("a photo of a cat").tolist()
    assert parity.tokenize("a cat", model="cn_clip/ViT-B-16", context_length=16).shape == (1, 16)
