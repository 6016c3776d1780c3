"""Chinese-CLIP's tokenizer: BERT's WordPiece over a `vocab.txt`, framework-neutral, text in, int64 ids out.

The rules are BERT's basic tokenizer as Chinese-CLIP (`cn_clip.clip.tokenize`) runs it: control
characters dropped and whitespace unified, every CJK ideograph made a word of its own, lower case and
accents stripped, punctuation split off, then greedy longest-match WordPiece (`##` continuations, [UNK]
for a word it cannot cover or one over 200 characters); [CLS] ... [SEP], zero padding to the context
(52), and a longer text cut to fit, [SEP] kept last. The vocabulary is a file: a checkpoint folder's
`vocab.txt`, or the one inside the installed `cn_clip` package (21,128 entries); it is never downloaded.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ParityError

CONTEXT_LENGTH = 52
MAX_WORD = 200  # characters: a longer word is [UNK]
MAX_TOKENS = 1 << 18  # lines of a vocab.txt: BERT's largest WordPiece vocabularies hold about 120,000
# CJK ideographs (the Unified Ideographs blocks and their extensions, and the compatibility ones); kana,
# hangul and CJK punctuation are not in them, and are tokenized as other letters and punctuation are
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _ideograph(code: int) -> bool:
    return any(low <= code <= high for low, high in _CJK)


def _space(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _punctuation(ch: str) -> bool:
    # every ASCII non-alphanumeric printable counts (BERT's rule: "$", "^", "`" are not Unicode punctuation)
    code = ord(ch)
    return 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126 or \
        unicodedata.category(ch).startswith("P")


def words(text: str, lower: bool = True) -> list[str]:
    """The basic tokenizer: the words and punctuation marks of `text`, before WordPiece."""
    kept = []
    for ch in text:
        if ch in ("\x00", "\ufffd") or _control(ch):
            continue
        if _space(ch):
            kept.append(" ")
        elif _ideograph(ord(ch)):
            kept.append(f" {ch} ")
        else:
            kept.append(ch)
    out: list[str] = []
    for word in "".join(kept).split():
        if lower:
            # lower case, then the accents off: decomposed, the combining marks dropped
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        piece = ""
        for ch in word:
            if _punctuation(ch):
                out += [piece, ch] if piece else [ch]
                piece = ""
            else:
                piece += ch
        if piece:
            out.append(piece)
    return " ".join(out).split()


class WordPiece:
    """A vocabulary (token -> id, from a vocab.txt: one token a line, the id its line number)."""

    def __init__(self, vocab_file):
        from ..io.formats.folders import read_small

        path = Path(vocab_file)
        try:
            self.data = read_small(path, "WordPiece vocabulary")  # the file's bytes, read once
            # counted before anything is built: a dict of millions of short tokens is 100s of MB
            count = self.data.count(b"\n") + (not self.data.endswith(b"\n"))
            if count > MAX_TOKENS:
                raise ParityError(f"a WordPiece vocabulary of {count} lines, more than the {MAX_TOKENS} "
                                  "tokens a BERT vocabulary has at the most", path=path)
            lines = self.data.decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ParityError(f"cannot be read as a WordPiece vocabulary ({e})", path=path) from None
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line starts no token
        self.vocab: dict[str, int] = {}
        for index, line in enumerate(lines):
            self.vocab[line.strip()] = index  # a repeated token takes its last line, as BERT's loader does
        for special in ("[CLS]", "[SEP]", "[UNK]"):
            if special not in self.vocab:
                raise ParityError(f"a WordPiece vocabulary without {special}", path=path)
        self.path = path

    def pieces(self, word: str) -> list[str]:
        """Greedy longest-match-first WordPiece of one word; ['[UNK]'] where it cannot be covered."""
        if len(word) > MAX_WORD:
            return ["[UNK]"]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return ["[UNK]"]
            out.append(piece)
            start = end
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS] and [SEP]."""
        return [self.vocab[p] for word in words(text) for p in self.pieces(word)]


def default_vocabulary() -> Path:
    """Chinese-CLIP's vocab.txt as parity's wheel ships it (cn_clip's file, byte for byte)."""
    return Path(__file__).parent / "vocabularies" / "cn_clip_vocab.txt"


@lru_cache(maxsize=4)
def _cached(vocab_file: str, stamp: tuple) -> WordPiece:
    return WordPiece(vocab_file)


def _tokenizer(vocab_file: str) -> WordPiece:
    # cached by the file's identity and state, so that a vocabulary changed on disk is read again
    try:
        st = Path(vocab_file).stat()
    except OSError as e:
        raise ParityError(f"cannot be read as a WordPiece vocabulary ({e})", path=vocab_file) from None
    return _cached(vocab_file, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def tokenize(texts: str | Iterable[str], context_length: int = CONTEXT_LENGTH, vocab_file=None) -> np.ndarray:
    """Chinese-CLIP's token ids of each text, [CLS] ... [SEP] and zero padding: int64 [N, context_length].
    A text longer than the context is cut to fit, [SEP] kept last (as `cn_clip.clip.tokenize` does).

    >>> tokenize("一张猫的照片")[0, :8].tolist()                       # doctest: +SKIP
    [101, 671, 2476, 4344, 4638, 4212, 4275, 102]
    """
    if context_length < 2:
        raise ParityError(f"a context of {context_length} tokens holds no [CLS] and [SEP]")
    wp = _tokenizer(str(vocab_file or default_vocabulary()))
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [wp.vocab["[CLS]"], *wp.encode(text)[:context_length - 2], wp.vocab["[SEP]"]]
        out[row, :len(ids)] = ids
    return out
