"""SigLIP's tokenizer: a folder's SentencePiece model (`spiece.model`) through the `sentencepiece` library,
giving the ids that transformers' `SiglipTokenizer` gives (big_vision's text preprocessing).

For each text, as `SiglipTokenizer` does it, in order: a leading `▁` (SentencePiece's word boundary) before
the text, whose own `▁` become spaces; lowercasing (a character at a time); every ASCII punctuation character removed, runs of
whitespace made one space, the ends stripped; the pieces of `<unk>` + text with the model's dummy prefix
off, the `<unk>` pieces dropped; `</s>` appended. Rows are cut to the context keeping `</s>` last, and
padded with the pad token, which is `</s>` in SigLIP's tokenizers. A text holding a special token's
string (`</s>`, `<unk>`, `<pad>`) is refused: `SiglipTokenizer` reads those as the tokens themselves.

The model file is read through parity's bounded file source and never executed (it is a protobuf).
"""
from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

VOCABULARY = "spiece.model"
CONTEXT = 64  # SigLIP's text length (so400m at 224 pixels: 16)
MAX_BYTES = 64 << 20  # the largest released SentencePiece models (mC4's, Gemma's 256k pieces) are a few MB
EOS, PAD, UNK = "</s>", "</s>", "<unk>"
BOUNDARY = "\u2581"  # SentencePiece's word-boundary piece, ▁
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class SentencePieceTokenizer:
    """A SentencePiece model as SigLIP tokenizes with it. `proto`: the model file's bytes."""

    def __init__(self, proto: bytes, name: str = VOCABULARY):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        try:
            model = sentencepiece_model_pb2.ModelProto.FromString(proto)
            # SiglipTokenizer loads the model with its dummy prefix off, and prefixes `▁` itself
            model.normalizer_spec.add_dummy_prefix = False
            self.sp = sentencepiece.SentencePieceProcessor()
            self.sp.LoadFromSerializedProto(model.SerializeToString())
        except Exception as e:  # noqa: BLE001 — protobuf's and sentencepiece's errors: one line about the file
            raise CheckpointError(f"not a SentencePiece model ({type(e).__name__}: {str(e).strip()[:200]})",
                                  path=name) from None
        pieces = {piece: self.sp.piece_to_id(piece) for piece in (EOS, PAD, UNK)}
        missing = [p for p, i in pieces.items() if i == self.sp.unk_id() and p != UNK]
        if missing or self.sp.id_to_piece(pieces[UNK]) != UNK:
            raise CheckpointError(f"a SentencePiece model without SigLIP's {', '.join(missing) or UNK} piece",
                                  path=name)
        self.eos, self.pad = pieces[EOS], pieces[PAD]
        self.unk_length = len(self.sp.encode(UNK, out_type=str))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def ids(self, text: str) -> list[int]:
        """One text's ids, `</s>` last (no padding, no cut)."""
        if not isinstance(text, str):
            raise TypeError(f"a text is a str, not {type(text).__name__}")
        held = [token for token in (EOS, PAD, UNK, "<pad>") if token in text]
        if held:
            raise ValueError(f"the text holds {held[0]!r}, which SigLIP's tokenizer reads as its special token")
        # lowercased a character at a time, as transformers' `tokenize` does it (so a final Σ is σ, not ς)
        text = "".join(c.lower() for c in BOUNDARY + text.replace(BOUNDARY, " "))
        text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
        pieces = self.sp.encode(UNK + text, out_type=str)
        pieces = pieces[self.unk_length:] if len(pieces) >= self.unk_length else pieces
        ids = [self.sp.piece_to_id(piece) for piece in pieces]
        return ids if ids and ids[-1] == self.eos else ids + [self.eos]

    def __call__(self, texts, context_length: int = CONTEXT) -> np.ndarray:
        """Ids of shape (len(texts), context_length), int64: each text's ids cut to the context with `</s>`
        kept last, then padded with the pad token."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.full((len(texts), context_length), self.pad, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.ids(text)
            if len(ids) > context_length:
                ids = ids[:context_length - 1] + [self.eos]
            out[row, :len(ids)] = ids
        return out


def read_model(path) -> bytes:
    """The bytes of the SentencePiece model at `path` (a file, or a folder holding `spiece.model`), read
    through one descriptor and bounded by its size; CheckpointError naming it for anything else."""
    from ..io.formats.source import open_source

    path = Path(path)
    if path.is_dir():
        path = path / VOCABULARY
    with open_source(path) as source:
        if source.size > MAX_BYTES:
            raise CheckpointError(f"a SentencePiece model of {source.size} bytes, more than the {MAX_BYTES} "
                                  "it may hold", path=path)
        return source.pread(0, source.size)


def load(path) -> SentencePieceTokenizer:
    """The SentencePiece model at `path` (see `read_model`), as SigLIP tokenizes with it."""
    path = Path(path)
    return _cached(read_model(path), str(path / VOCABULARY if path.is_dir() else path))


@lru_cache(maxsize=4)
def _cached(proto: bytes, name: str) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(proto, name)


def tokenize(texts, vocab_file, context_length: int = CONTEXT) -> np.ndarray:
    """`texts` tokenized as `SiglipTokenizer(vocab_file)(texts, padding="max_length", truncation=True,
    max_length=context_length)` gives its `input_ids`."""
    return load(vocab_file)(texts, context_length)
