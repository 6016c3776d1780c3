"""A BERT text tower, Chinese-CLIP's (cn_clip's `bert.*` names): post-LayerNorm blocks with a padding mask,
WordPiece tokens, pooled at [CLS], no pooler. Its context is its tokenizer's length (52 for Chinese-CLIP),
in no tensor: `positions` (max_position_embeddings) and `types` (token types) are."""
from __future__ import annotations

import json

import numpy as np

from ..config.parts import TextConfig
from ..errors import ConfigError
from .base import Shapes, TextTower, count, shape

# the photographs' captions in Chinese
CAPTIONS = {
    "page": "一页关于图像分割的文字", "chelsea": "一张虎斑猫的脸部照片", "astronaut": "一位宇航员和美国国旗的肖像",
    "rocket": "一枚立在发射台上的火箭", "motorcycle_right": "一辆停在车库里的红色摩托车",
    "camera": "一个人看着三脚架上的相机", "horse": "一匹马的黑白剪影", "coffee": "茶碟上的一杯咖啡",
}
# the canonical text: an all-ones text means nothing to a BERT (id 1 is [unused1], with no [CLS])
CANONICAL = "一张照片"


def hub_shapes(config) -> Shapes:
    t = config.text
    w, m = t.width, t.mlp_width
    s = {"bert.embeddings.word_embeddings.weight": (t.vocab_size, w),
         "bert.embeddings.position_embeddings.weight": (t.positions, w),
         "bert.embeddings.token_type_embeddings.weight": (t.types, w),
         "bert.embeddings.LayerNorm.weight": (w,), "bert.embeddings.LayerNorm.bias": (w,)}
    for i in range(t.layers):
        p = f"bert.encoder.layer.{i}"
        for x in ("query", "key", "value"):
            s.update({f"{p}.attention.self.{x}.weight": (w, w), f"{p}.attention.self.{x}.bias": (w,)})
        s.update({f"{p}.attention.output.dense.weight": (w, w), f"{p}.attention.output.dense.bias": (w,),
                  f"{p}.attention.output.LayerNorm.weight": (w,), f"{p}.attention.output.LayerNorm.bias": (w,),
                  f"{p}.intermediate.dense.weight": (m, w), f"{p}.intermediate.dense.bias": (m,),
                  f"{p}.output.dense.weight": (w, m), f"{p}.output.dense.bias": (w,),
                  f"{p}.output.LayerNorm.weight": (w,), f"{p}.output.LayerNorm.bias": (w,)})
    return s


def infer(hub) -> TextConfig:
    vocab, width = shape(hub, "bert.embeddings.word_embeddings.weight")  # [vocab, width]
    return TextConfig(width, count(hub, "bert.encoder.layer."),
                      shape(hub, "bert.encoder.layer.0.intermediate.dense.weight")[0], None, vocab, kind="bert",
                      positions=shape(hub, "bert.embeddings.position_embeddings.weight")[0],
                      types=shape(hub, "bert.embeddings.token_type_embeddings.weight")[0])


def check(t: TextConfig) -> None:
    if t.positions is None or t.types is None:
        raise ConfigError("text.positions and text.types: a BERT text tower has both, a CLIP one neither")
    if t.context_length is not None and t.context_length > t.positions:
        raise ConfigError(f"text.context_length {t.context_length} is more than the BERT's {t.positions} positions")


def describe(t: TextConfig) -> str:
    return (f"BERT {t.layers}x{t.width} mlp {t.mlp_width} context {t.context_length} positions {t.positions} "
            f"types {t.types} vocab {t.vocab_size} heads {t.heads} {t.activation} eps {t.eps}")


def tokenize(texts, context_length: int, vocab_file=None, truncate: bool = True) -> np.ndarray:
    # Chinese-CLIP's tokenizer always cuts a long text, keeping [SEP] last (`truncate` changes nothing)
    from ..text.wordpiece import tokenize as wordpiece
    return wordpiece(texts, context_length, vocab_file)


def canonical_label(context_length: int, vocab_file=None) -> str:
    return (f"text \"{CANONICAL}\" tokenized (1, {context_length}) int64 (a BERT text tower: an all-ones text "
            f"means nothing to it; vocabulary: {vocab_file or 'cn_clip'})")


def computable(t: TextConfig, vocab_file=None, captions: bool = True) -> str | None:
    # Chinese captions, WordPiece ids: each must have a row, and the context must hold them
    ids = tokenize([CANONICAL, *(CAPTIONS.values() if captions else ())], t.positions, vocab_file)
    if int(ids.max()) >= t.vocab_size:
        return (f"its word embedding has {t.vocab_size} rows, but Chinese-CLIP's tokenizer gives ids up to "
                f"{int(ids.max())}: the captions cannot be encoded for it")
    if t.context_length < int((ids != 0).sum(axis=1).max()):
        return f"its context holds {t.context_length} tokens, and the captions need {int((ids != 0).sum(axis=1).max())}"
    return None


def tokenizer_files(t: TextConfig, vocab_file=None) -> dict[str, bytes]:
    from ..text.wordpiece import WordPiece, default_vocabulary

    vocab = WordPiece(vocab_file or default_vocabulary())
    spec = {"kind": "bert-wordpiece", "vocabulary": "vocab.txt", "context_length": t.context_length,
            "lower_case": True, "cls": vocab.vocab["[CLS]"], "sep": vocab.vocab["[SEP]"], "pad": 0,
            "pooling": "[CLS]; padding (id 0) masked"}
    return {"vocab.txt": vocab.data, "tokenizer.json": json.dumps(spec, indent=2).encode()}


def image_preprocessing(r: int) -> dict:
    return {"resize": [r, r], "center_crop": None}  # Chinese-CLIP's transform: straight to R x R


TOWER = TextTower(
    kind="bert", part="text", label="BERT", telltale="bert.embeddings.word_embeddings.weight", hub_shapes=hub_shapes,
    infer=infer, check=check, describe=describe, unknown=("heads", "activation", "eps", "context_length"),
    unsaid=("heads", "activation", "eps", "context_length"), block="BertLayer",
    embeddings=("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                "bert.embeddings.token_type_embeddings.weight"),
    tokenize=tokenize, canonical=lambda context, vocab_file=None: tokenize(CANONICAL, context, vocab_file),
    canonical_label=canonical_label, captions=CAPTIONS, computable=computable, tokenizer_files=tokenizer_files,
    vocabulary="vocab.txt", image_preprocessing=image_preprocessing, prefix="bert.", called="a BERT (Chinese-CLIP's)",
    embed=lambda hub: shape(hub, "text_projection")[1] if "text_projection" in hub else None)  # [width, embed]
