"""CLIP's own text tower: a causal transformer over BPE tokens with learned positions, a final LayerNorm,
pooled at the end-of-text token (the highest id). Its context is its positional embedding's length."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config.parts import TextConfig
from ..errors import ConfigError
from .base import OPENAI_RULE, Shapes, TextTower, block_shapes, count, shape

# scikit-image's sample photographs, as in CLIP's own zero-shot notebook, each with its caption
CAPTIONS = {
    "page": "a page of text about segmentation",
    "chelsea": "a facial photo of a tabby cat",
    "astronaut": "a portrait of an astronaut with the American flag",
    "rocket": "a rocket standing on a launchpad",
    "motorcycle_right": "a red motorcycle standing in a garage",
    "camera": "a person looking at a camera on a tripod",
    "horse": "a black-and-white silhouette of a horse",
    "coffee": "a cup of coffee on a saucer",
}


def hub_shapes(config) -> Shapes:
    t = config.text
    s = {"positional_embedding": (t.context_length, t.width)}
    for i in range(t.layers):
        s.update(block_shapes(f"transformer.resblocks.{i}", t.width, t.mlp_width))
    s.update({"token_embedding.weight": (t.vocab_size, t.width), "ln_final.weight": (t.width,),
              "ln_final.bias": (t.width,)})
    return s


def infer(hub) -> TextConfig:
    vocab, width = shape(hub, "token_embedding.weight")  # [vocab, width]
    return TextConfig(width, count(hub, "transformer.resblocks."),
                      shape(hub, "transformer.resblocks.0.mlp.c_fc.weight")[0], shape(hub, "positional_embedding")[0],
                      vocab)


def check(t: TextConfig) -> None:
    if t.context_length is None:  # its positional embedding says it
        raise ConfigError("text.context_length is null: a CLIP text tower has one")
    if t.positions is not None and t.types is not None:
        raise ConfigError("text.positions and text.types: a BERT text tower has both, a CLIP one neither")


def describe(t: TextConfig) -> str:
    return (f"text {t.layers}x{t.width} mlp {t.mlp_width} context {t.context_length} vocab {t.vocab_size} heads "
            f"{t.heads} {t.activation} eps {t.eps}")


def rule(t: TextConfig) -> TextConfig:
    return replace(t, heads=t.width // 64, mlp_width=4 * t.width, **OPENAI_RULE)


def tokenize(texts, context_length: int, vocab_file=None, truncate: bool = False) -> np.ndarray:
    from ..text.bpe import tokenize as bpe
    return bpe(texts, context_length, truncate)


def canonical(context_length: int, vocab_file=None) -> np.ndarray:
    return np.ones((1, context_length), dtype=np.int64)  # the reference table's text: ones (1, 77)


def computable(t: TextConfig, vocab_file=None, captions: bool = True) -> str | None:
    from ..text.bpe import VOCAB_SIZE, tokenize as bpe
    if not captions:
        return None
    if t.vocab_size < VOCAB_SIZE:
        return (f"its token embedding has {t.vocab_size} rows, but CLIP's tokenizer gives ids up to "
                f"{VOCAB_SIZE - 1}: the captions cannot be encoded for it")
    longest = max(int(np.count_nonzero(bpe(text, 10_000))) for text in CAPTIONS.values())
    if t.context_length < longest:
        return f"its context holds {t.context_length} tokens, and the captions need {longest}"
    return None


def tokenizer_files(t: TextConfig, vocab_file=None) -> dict[str, bytes]:
    from ..text.bpe import default_tokenizer, default_vocabulary

    tok = default_tokenizer()
    spec = {"kind": "clip-bpe", "vocabulary": "bpe_simple_vocab_16e6.txt.gz", "context_length": t.context_length,
            "start": tok.start, "end": tok.end, "pad": 0, "pooling": "the highest id (end of text)"}
    return {"bpe_simple_vocab_16e6.txt.gz": Path(default_vocabulary()).read_bytes(),
            "tokenizer.json": json.dumps(spec, indent=2).encode()}


def image_preprocessing(r: int) -> dict:
    return {"resize": f"shorter side to {r}", "center_crop": [r, r]}  # openai/CLIP's _transform


TOWER = TextTower(
    kind="clip", part="text", label="text", telltale="token_embedding.weight", hub_shapes=hub_shapes, infer=infer,
    check=check, describe=describe, unknown=("heads", "activation", "eps"), block="ResidualAttentionBlock",
    rule=rule, embeddings=("token_embedding.weight",), tokenize=tokenize, canonical=canonical,
    canonical_label=lambda context, vocab_file=None: f"text ones (1, {context}) int64", captions=CAPTIONS,
    computable=computable, tokenizer_files=tokenizer_files, image_preprocessing=image_preprocessing,
    hub_first=("positional_embedding",), archive_entries=True, alone=True, called="CLIP's own text tower",
    embed=lambda hub: shape(hub, "text_projection")[1] if "text_projection" in hub else None)  # [width, embed]
