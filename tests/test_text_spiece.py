"""SigLIP's tokenizer (`parity.text.spiece`) against transformers' `SiglipTokenizer`, the oracle, on a tiny
SentencePiece model trained here offline (nothing can be downloaded): the same ids for captions, case,
punctuation, underscores, whitespace, Unicode, empty and over-long texts; refusals in one line."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from parity.errors import CheckpointError
from parity.text import spiece

CORPUS = ["a photo of a cat", "a photo of a dog", "two cats sleeping on a red sofa", "a diagram of a neural network",
          "the quick brown fox jumps over the lazy dog", "an image of the sea at sunset",
          "a painting of a horse in a field", "une photo d'un chat", "ein foto von einem hund",
          "a rocket standing on a launchpad", "a cup of coffee on a saucer"]
TEXTS = ["a photo of a cat", "A Photo, of a CAT!", "a red_car,  on   the road!", "  leading and trailing  ",
         "tabs\tand\nnewlines", "café crème brûlée", "ΟΔΟΣ Σ", "中文 的 照片", "emoji 🐱 cat", "", "!!!",
         "a\u2581boundary inside", "İstanbul", "x" * 300, " ".join(["a photo of a dog"] * 40),
         "a rocket standing on a launchpad"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A unigram SentencePiece model with T5's and SigLIP's ids (<pad> 0, </s> 1, <unk> 2), trained in memory."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("spiece")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(folder / "spiece"), vocab_size=96,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return folder / "spiece.model"


def oracle(model, texts, context):
    from transformers import SiglipTokenizer

    warnings.simplefilter("ignore")
    tok = SiglipTokenizer(vocab_file=str(model), model_input_names=["input_ids"])
    return np.asarray(tok(texts, padding="max_length", truncation=True, max_length=context)["input_ids"], np.int64)


@pytest.mark.parametrize("context", [64, 16])
def test_the_ids_are_siglip_tokenizers(model, context):
    got = spiece.tokenize(TEXTS, model, context)
    want = oracle(model, TEXTS, context)
    assert got.shape == want.shape == (len(TEXTS), context) and got.dtype == np.int64
    for text, a, b in zip(TEXTS, got, want):
        assert a.tolist() == b.tolist(), (text, a.tolist(), b.tolist())
    tok = spiece.load(model.parent)  # a folder holding spiece.model reads the same
    assert tok.eos == tok.pad == 1 and (got[:, -1] == 1).all()  # the cut keeps </s> last; pads are </s>
    assert tok.ids("a photo of a cat") == spiece.load(model).ids("A PHOTO OF A CAT.")


def test_special_token_strings_and_bad_files_are_refused(model, tmp_path):
    tok = spiece.load(model)
    for text in ("a </s> b", "an <unk>", "a <pad>"):
        with pytest.raises(ValueError, match="reads as its special token"):
            tok.ids(text)
    with pytest.raises(TypeError):
        tok.ids(b"bytes")
    (tmp_path / "spiece.model").write_bytes(b"\x0a\xff\xff not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        spiece.load(tmp_path)
    with pytest.raises(CheckpointError):
        spiece.load(tmp_path / "missing.model")
