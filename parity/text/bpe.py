"""CLIP's byte-level BPE tokenizer, framework-neutral: text in, an int64 numpy array of token ids out.

The vocabulary is the official merges file that the `openai-clip` package ships
(`bpe_simple_vocab_16e6.txt.gz`); the rules are openai/CLIP's `simple_tokenizer` and `clip.tokenize`:
ftfy + double HTML unescape + whitespace collapse + lower case, one regex split, byte-level BPE, then
<|startoftext|> ... <|endoftext|>, zero padding to the context length, and on `truncate` the end token
kept as the last one.
"""
from __future__ import annotations

from pathlib import Path

import gzip
import html
from functools import lru_cache
from typing import Iterable

import numpy as np

START, END = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # the released vocabulary: 256 bytes x 2 (plain, end-of-word) + merges + 2 specials
VOCAB_SIZE = 2 * 256 + N_MERGES + 2  # 49408 ids: a text tower's embedding needs a row for each


@lru_cache(maxsize=None)
def _byte_alphabet() -> tuple[str, ...]:
    # Each byte value gets a printable character: printable Latin-1 bytes stand for themselves, the rest
    # (controls, space, ...) are moved to code points from 256 upwards, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return tuple(chr(b) if b in printable else chr(next(shifted)) for b in range(256))


VOCABULARIES = Path(__file__).parent / "vocabularies"  # data files shipped in the wheel (see its README)


def default_vocabulary() -> str:
    """CLIP's BPE merges as parity's wheel ships them (openai/CLIP's file, byte for byte)."""
    return str(VOCABULARIES / "bpe_simple_vocab_16e6.txt.gz")


class Tokenizer:
    """Byte-level BPE over the official merges; `encode` gives ids without start/end tokens."""

    def __init__(self, merges_path: str | None = None):
        import regex

        lines = gzip.open(merges_path or default_vocabulary()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]  # line 0 is a version header
        alphabet = list(_byte_alphabet())
        # ids: the byte characters by code point (printable bytes first, then the moved ones), the same with
        # the end-of-word mark, one per merge, then the two specials
        chars = sorted(alphabet, key=ord)
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.start, self.end = self.encoder[START], self.encoder[END]
        self._byte_of = {c: b for b, c in enumerate(alphabet)}
        self._split = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                                    r"|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
        self._spaces = regex.compile(r"\s+")
        self._cache = {START: [START], END: [END]}

    def _merge(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.ranks.get(pair, float("inf")), pair) for pair in zip(parts, parts[1:])]
            rank, (first, second) = min(ranked, key=lambda r: r[0])
            if rank == float("inf"):
                break
            merged, i = [], 0
            while i < len(parts):  # every non-overlapping occurrence, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def clean(self, text: str) -> str:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return self._spaces.sub(" ", text).strip().lower()

    def encode(self, text: str) -> list[int]:
        alphabet = _byte_alphabet()
        ids = []
        for piece in self._split.findall(self.clean(text)):
            word = "".join(alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self._merge(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        # every character of a token (specials and the "</w>" mark included) stands for one byte
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self._byte_of[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


@lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | Iterable[str], context_length: int | None = None, truncate: bool = False) -> np.ndarray:
    """Token ids of shape (len(texts), context_length), int64, as `clip.tokenize` makes them (context 77
    by default). Each row is <|startoftext|>, the text's BPE ids, <|endoftext|>, then zeros. A text too
    long for the context raises ValueError unless `truncate`, which cuts it and puts <|endoftext|> last.

    >>> tokenize(["a photo of a cat", "a dog"]).shape
    (2, 77)
    """
    context_length = context_length or 77
    tok = default_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [tok.start, *tok.encode(text), tok.end]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {row} is {len(ids)} tokens long, more than the context length "
                                 f"{context_length}; shorten it or pass truncate=True")
            ids = ids[:context_length - 1] + [tok.end]
        out[row, :len(ids)] = ids
    return out


def hf_tokenizer_files(context_length: int = 77) -> dict[str, bytes]:
    """A Hugging Face CLIP tokenizer's files (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json), made from the same vocabulary: `CLIPTokenizer(Fast).from_pretrained` reads
    them offline and gives parity's ids. It pads with <|endoftext|>, as OpenAI's own Hugging Face releases
    do, where `clip.tokenize` pads with 0: the text's ids are the same, and so is the text feature (the
    causal mask keeps padding away from the end-of-text token, where the text is pooled). A pad of 0 would
    need "!" as a special token, which would then be split out of every text."""
    import json

    tok = default_tokenizer()
    merges = sorted(tok.ranks, key=tok.ranks.get)
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length, "do_lower_case": True,
              "errors": "replace", "clean_up_tokenization_spaces": False, **special}
    return {
        "vocab.json": json.dumps(tok.encoder, ensure_ascii=False).encode("utf-8"),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8"),
        "tokenizer_config.json": json.dumps(config, indent=2).encode(),
        "special_tokens_map.json": json.dumps(special, indent=2).encode(),
    }
