"""SigLIP's text tower (transformers' `SiglipTextTransformer`, under `text_model.`): learned positions, pre-LayerNorm
blocks with no causal mask and no padding mask (pads are attended to, as in training), a final LayerNorm,
pooled at the last position, then `head`, a Linear with a bias, into the image embedding's space.

Its tokenizer is the checkpoint folder's own SentencePiece model (`spiece.model`), padded with `</s>` to the
full context (64; 16 for so400m at 224 pixels). A whole SigLIP's logits are sigmoid logits:
`logit_scale.exp() * cos + logit_bias`, both of shape [1].
"""
from __future__ import annotations

import json

import numpy as np

from ..config.parts import TextConfig
from ..errors import ConfigError
from .base import Shapes, TextTower, count, encoder_shapes, shape
from .clip_text import CAPTIONS

PREFIX = "text_model"
VOCABULARY = "spiece.model"
NO_VOCABULARY = ("SigLIP's tokenizer is the checkpoint folder's spiece.model, and none was given: put it beside "
                 "the weights")


def hub_shapes(config) -> Shapes:
    t = config.text
    if config.embed_dim is None:
        raise ConfigError("embed_dim is null: SigLIP's text tower always ends in its head, embed_dim wide")
    s = {f"{PREFIX}.embeddings.token_embedding.weight": (t.vocab_size, t.width),
         f"{PREFIX}.embeddings.position_embedding.weight": (t.context_length, t.width)}
    s.update(encoder_shapes(f"{PREFIX}.encoder", t.layers, t.width, t.mlp_width))
    s.update({f"{PREFIX}.final_layer_norm.weight": (t.width,), f"{PREFIX}.final_layer_norm.bias": (t.width,),
              f"{PREFIX}.head.weight": (config.embed_dim, t.width), f"{PREFIX}.head.bias": (config.embed_dim,)})
    return s


def infer(hub) -> TextConfig:
    vocab, width = shape(hub, f"{PREFIX}.embeddings.token_embedding.weight")  # [vocab, width]
    return TextConfig(width, count(hub, f"{PREFIX}.encoder.layers."),
                      shape(hub, f"{PREFIX}.encoder.layers.0.mlp.fc1.weight")[0],
                      shape(hub, f"{PREFIX}.embeddings.position_embedding.weight")[0], vocab, kind="siglip_text")


def check(t: TextConfig) -> None:
    if t.context_length is None:
        raise ConfigError("text.context_length is null: a SigLIP text tower has one (its positions)")
    if t.positions is not None or t.types is not None:
        raise ConfigError("text.positions and text.types: a BERT text tower has them, a SigLIP one neither")


def describe(t: TextConfig) -> str:
    return (f"SigLIP text {t.layers}x{t.width} mlp {t.mlp_width} context {t.context_length} vocab {t.vocab_size} "
            f"heads {t.heads} {t.activation} eps {t.eps}")


def tokenize(texts, context_length: int, vocab_file=None, truncate: bool = True) -> np.ndarray:
    # SigLIP's tokenizer always cuts a long text, keeping </s> last (`truncate` changes nothing)
    from ..text.spiece import tokenize as spiece

    if vocab_file is None:
        raise ConfigError(NO_VOCABULARY)
    return spiece(texts, vocab_file, context_length)


def canonical(context_length: int, vocab_file=None) -> np.ndarray:
    return np.ones((1, context_length), dtype=np.int64)  # ids ones (1, 64): `</s>`, SigLIP's pad, throughout


def computable(t: TextConfig, vocab_file=None, captions: bool = True) -> str | None:
    if not captions:
        return None
    if vocab_file is None:
        return "no spiece.model beside it: the captions need the folder's SentencePiece tokenizer"
    ids = tokenize(list(CAPTIONS.values()), t.context_length, vocab_file)
    if int(ids.max()) >= t.vocab_size:
        return (f"its token embedding has {t.vocab_size} rows, but its tokenizer gives ids up to {int(ids.max())}: "
                "the spiece.model is not this model's")
    return None


def tokenizer_files(t: TextConfig, vocab_file=None) -> dict[str, bytes]:
    from ..text.spiece import SentencePieceTokenizer, read_model

    if vocab_file is None:
        raise ConfigError(NO_VOCABULARY)
    data = read_model(vocab_file)
    tok = SentencePieceTokenizer(data)
    spec = {"kind": "siglip-sentencepiece", "vocabulary": VOCABULARY, "context_length": t.context_length,
            "eos": tok.eos, "pad": tok.pad, "lowercase": True, "strip_punctuation": True,
            "pooling": "the last position (no mask: pads are attended to)"}
    return {VOCABULARY: data, "tokenizer.json": json.dumps(spec, indent=2).encode()}


def image_preprocessing(r: int) -> dict:
    # SiglipImageProcessor: straight to R x R (bicubic), no crop, mean and std 0.5 (pixels in [-1, 1])
    return {"resize": [r, r], "center_crop": None, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


TOWER = TextTower(
    kind="siglip_text", part="text", label="SigLIP text", telltale=f"{PREFIX}.head.weight",
    hub_shapes=hub_shapes, infer=infer, check=check, describe=describe, unknown=("heads", "activation", "eps"),
    block="SiglipEncoderLayer", embeddings=(f"{PREFIX}.embeddings.token_embedding.weight",
                                           f"{PREFIX}.embeddings.position_embedding.weight"),
    tokenize=tokenize, canonical=canonical,
    canonical_label=lambda context, vocab_file=None: f"text ids ones (1, {context}) int64", captions=CAPTIONS,
    computable=computable, tokenizer_files=tokenizer_files, vocabulary=VOCABULARY, needs_vocabulary=True,
    image_preprocessing=image_preprocessing, alone=True, called="SigLIP's text tower", prefix=f"{PREFIX}.", family="siglip", projection_kind="inside",
    embed=lambda hub: shape(hub, f"{PREFIX}.head.weight")[0],  # [embed, width]
    scalars={"logit_scale": (1,), "logit_bias": (1,)}, projection=False, logits="sigmoid")
