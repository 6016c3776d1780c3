"""Paddle CLIP: the module tree of `torch_clip.py`, in idiomatic Paddle.

Layout differences (all handled by `parity.keymap`): transformer attention has separate q/k/v/out_proj
Linears, named as in Paddle's `nn.MultiHeadAttention` (batch-first), Linear weights are [in, out], BatchNorm holds `_mean`/`_variance` and
no `num_batches_tracked`, `logit_scale` has shape [1]. Every other name equals the official one.
Paddle cannot compute in float16 on the CPU: load float32 weights.
"""
from __future__ import annotations

import math

from .. import towers as kinds
from ..config.schema import Config, TextConfig, VisionConfig
from .frameworks import import_paddle
from .paddle_ops import Linear, materialized_views
from .paddle_resnet import BLOCKS as RESNET_BLOCKS, ModifiedResNet
from .paddle_siglip import GELUTanh, SiglipEncoderLayer, SiglipTextTransformer, SiglipVisionTransformer
from .paddle_siglip import logits as sigmoid_logits

paddle = import_paddle()  # before `paddle.nn`, so its import-time warning stays quiet
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402


class QuickGELU(nn.Layer):
    def forward(self, x):
        return x * F.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU, "gelu_tanh": GELUTanh}  # nn.GELU: the exact (erf) form


class MultiHeadAttention(nn.Layer):
    """Self-attention with the parameters (and names) of Paddle's `nn.MultiHeadAttention`: q_proj, k_proj,
    v_proj, out_proj. Written out, so that its Linears add their bias in the GEMM."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(embed_dim, embed_dim) for _ in range(4))

    def forward(self, x, attn_mask=None):
        n, length, width = x.shape
        head_dim = width // self.num_heads

        def heads(t):  # [N, L, D] -> [N, L, heads, D/heads] -> [N, heads, L, D/heads]
            return t.reshape([n, length, self.num_heads, head_dim]).transpose([0, 2, 1, 3])

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = paddle.matmul(q * head_dim ** -0.5, k, transpose_y=True)  # [N, heads, L, L]
        if attn_mask is not None:
            scores = scores + attn_mask
        out = paddle.matmul(F.softmax(scores, axis=-1), v)  # [N, heads, L, D/heads]
        return self.out_proj(out.transpose([0, 2, 1, 3]).reshape([n, length, width]))  # [N, L, D]


class ResidualAttentionBlock(nn.Layer):
    def __init__(self, d_model: int, n_head: int, mlp_width: int, activation: str, eps: float, attn_mask=None):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model, epsilon=eps)
        self.mlp = nn.Sequential(
            ("c_fc", Linear(d_model, mlp_width)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", Linear(mlp_width, d_model)),
        )
        self.ln_2 = nn.LayerNorm(d_model, epsilon=eps)
        self.attn_mask = attn_mask  # additive float mask: Paddle's boolean masks mean "attend", torch's "block"

    def forward(self, x):
        h = self.ln_1(x)
        mask = None if self.attn_mask is None else self.attn_mask.astype(h.dtype)
        x = x + self.attn(h, attn_mask=mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Layer):
    """Batch-first ([N, L, D]) stack: Paddle's MultiHeadAttention silently misreads sequence-first input."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float,
                 attn_mask=None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, mlp_width, activation, eps, attn_mask)
                                         for _ in range(layers)])

    def forward(self, x, states: list | None = None):
        if states is None:
            return self.resblocks(x)
        for block in self.resblocks:  # the same blocks in turn, each output kept
            x = block(x)
            states.append(x)
        return x


class VisionTransformer(nn.Layer):
    def __init__(self, v: VisionConfig, output_dim: int):
        super().__init__()
        self.input_resolution = v.image_size
        self.conv1 = nn.Conv2D(3, v.width, v.patch_size, stride=v.patch_size, bias_attr=False)
        self.class_embedding = self.create_parameter([v.width])
        grid = v.image_size // v.patch_size
        self.positional_embedding = self.create_parameter([grid * grid + 1, v.width])
        self.ln_pre = nn.LayerNorm(v.width, epsilon=v.eps)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_width, v.activation, v.eps)
        self.ln_post = nn.LayerNorm(v.width, epsilon=v.eps)
        # an image tower saved without its projection (CLIPVisionModel) has none
        self.proj = self.create_parameter([v.width, output_dim]) if output_dim is not None else None

    def forward(self, x):
        pooled = self.pool(x)
        return pooled if self.proj is None else paddle.matmul(pooled, self.proj)

    def pool(self, x, states: list | None = None):
        """As the torch model's: the post-LayerNormed class token, and the blocks' states."""
        x = self.conv1(x)  # [N, width, grid, grid]
        x = x.flatten(2).transpose([0, 2, 1])  # [N, grid**2, width]
        cls = self.class_embedding.astype(x.dtype).expand([x.shape[0], 1, x.shape[-1]])  # [N, 1, width]
        x = paddle.concat([cls, x], axis=1)  # [N, grid**2 + 1, width]
        x = self.ln_pre(x + self.positional_embedding.astype(x.dtype))
        if states is not None:
            states.append(x)  # the blocks' input first
        x = self.transformer(x, states)
        return self.ln_post(x[:, 0, :])

    def states(self, x) -> dict:
        """As the torch model's: last and penultimate hidden states, pooled output, embeds."""
        hidden: list = []
        pooled = self.pool(x, hidden)
        return tower_outputs(hidden, hidden[-1], pooled,
                             None if self.proj is None else paddle.matmul(pooled, self.proj))


class BertEmbeddings(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(t.vocab_size, t.width)
        self.position_embeddings = nn.Embedding(t.positions, t.width)
        self.token_type_embeddings = nn.Embedding(t.types, t.width)
        self.LayerNorm = nn.LayerNorm(t.width, epsilon=t.eps)

    def forward(self, ids):
        positions = paddle.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)  # [N, L]
        # every token is of type 0: Chinese-CLIP encodes one sentence
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions) +
                              self.token_type_embeddings(paddle.zeros_like(ids)))


class BertSelfAttention(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.heads = t.heads
        self.query, self.key, self.value = (Linear(t.width, t.width) for _ in range(3))

    def forward(self, x, mask):
        n, length, width = x.shape

        def split(y):  # [N, L, W] -> [N, heads, L, W / heads]
            return y.reshape([n, length, self.heads, width // self.heads]).transpose([0, 2, 1, 3])
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(width // self.heads) + mask
        out = paddle.matmul(F.softmax(scores, axis=-1), v)  # [N, heads, L, W / heads]
        return out.transpose([0, 2, 1, 3]).reshape([n, length, width])


class BertResidual(nn.Layer):
    """dense, then the post-LayerNorm of the residual sum (BERT's SelfOutput and Output)."""

    def __init__(self, width_in: int, t: TextConfig):
        super().__init__()
        self.dense = Linear(width_in, t.width)
        self.LayerNorm = nn.LayerNorm(t.width, epsilon=t.eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.self = BertSelfAttention(t)  # the checkpoint's name: attention.self.query, ...
        self.output = BertResidual(t.width, t)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.dense = Linear(t.width, t.mlp_width)
        self.act = ACTIVATIONS[t.activation]()

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.attention = BertAttention(t)
        self.intermediate = BertIntermediate(t)
        self.output = BertResidual(t.mlp_width, t)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Layer):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.layer = nn.LayerList([BertLayer(t) for _ in range(t.layers)])

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Bert(nn.Layer):
    """Chinese-CLIP's text tower: a BERT without a pooler, batch-first ([N, L, W])."""

    def __init__(self, t: TextConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(t)
        self.encoder = BertEncoder(t)

    def forward(self, ids):
        x = self.embeddings(ids)
        # padding (id 0) masked out additively, with BERT's -10000 rather than -inf
        mask = (1.0 - (ids != 0).astype(x.dtype))[:, None, None, :] * -10000.0  # [N, 1, 1, L]
        return self.encoder(x, mask)


def tower_outputs(hidden: list, last, pooled, embeds) -> dict:
    """A tower's outputs by transformers' names: `hidden` holds the blocks' input, then each block's output."""
    out = {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": pooled}
    return out if embeds is None else {**out, "embeds": embeds}


def causal_mask(length: int):
    # additive mask: -inf above the diagonal, so token t attends to tokens <= t
    return paddle.triu(paddle.full([length, length], float("-inf")), diagonal=1)


def vit(config: Config) -> nn.Layer:
    return VisionTransformer(config.vision, config.embed_dim)


def resnet(config: Config) -> nn.Layer:
    v = config.vision
    return ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_size, v.width)


def clip_text(model: nn.Layer, t: TextConfig, embed_dim: int) -> None:
    # CLIP's own text tower, under openai/CLIP's top-level names (its state dict has no text prefix)
    model.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_width, t.activation, t.eps,
                                    causal_mask(t.context_length))
    model.token_embedding = nn.Embedding(t.vocab_size, t.width)
    model.positional_embedding = model.create_parameter([t.context_length, t.width])
    model.ln_final = nn.LayerNorm(t.width, epsilon=t.eps)
    # a text tower saved without its projection (CLIPTextModel) has none
    model.text_projection = model.create_parameter([t.width, embed_dim]) if embed_dim is not None else None


def encode_clip_text(model: nn.Layer, text, states: dict | None = None):
    x = model.token_embedding(text).astype(model.dtype)  # [N, L, D]
    x = x + model.positional_embedding.astype(model.dtype)
    hidden = None if states is None else [x]
    x = model.ln_final(model.transformer(x, hidden))
    # the end-of-text token has the highest id in each sequence: its output is the text feature
    eot = text.argmax(axis=-1)  # [N]
    pooled = paddle.take_along_axis(x, eot.reshape([-1, 1, 1]).expand([-1, 1, x.shape[-1]]), axis=1)[:, 0]
    embeds = pooled if model.text_projection is None else paddle.matmul(pooled, model.text_projection)
    if states is not None:  # transformers' CLIPTextModel's outputs: its last hidden state is the normed one
        states.update(tower_outputs(hidden, x, pooled, None if model.text_projection is None else embeds))
    return embeds


def bert_text(model: nn.Layer, t: TextConfig, embed_dim: int) -> None:
    model.bert = Bert(t)
    model.text_projection = model.create_parameter([t.width, embed_dim])


def encode_bert_text(model: nn.Layer, text):
    # the [CLS] token's output is the text feature
    return paddle.matmul(model.bert(text)[:, 0, :], model.text_projection)


# tower kind (parity.towers) -> how this file builds it: image towers as `visual`; text towers put their
# layers on the CLIP under the checkpoint's own names, and encode through it
def siglip_vit(config: Config) -> nn.Layer:
    v = config.vision
    return SiglipVisionTransformer(v.width, v.layers, v.heads, v.mlp_width, v.image_size, v.patch_size, v.activation, v.eps)


def siglip_text(model: nn.Layer, t: TextConfig, embed_dim: int) -> None:
    model.text_model = SiglipTextTransformer(t.width, t.layers, t.heads, t.mlp_width, t.vocab_size, t.context_length,
                                             embed_dim, t.activation, t.eps)


def encode_siglip_text(model: nn.Layer, text, states: dict | None = None):
    out = model.text_model.states(text)
    if states is not None:
        states.update(out)
    return out["pooled"]  # the head's output


VISION = {"vit": vit, "resnet": resnet, "siglip_vit": siglip_vit}
TEXT = {"clip": (clip_text, encode_clip_text), "bert": (bert_text, encode_bert_text),
        "siglip_text": (siglip_text, encode_siglip_text)}
BLOCKS = {"ResidualAttentionBlock": ResidualAttentionBlock, **RESNET_BLOCKS, "BertLayer": BertLayer,
          "SiglipEncoderLayer": SiglipEncoderLayer}


class CLIP(nn.Layer):
    """Built from a complete Config: every width, head count, activation and eps comes from it.
    `towers`: both, or one ("image", "text") with the logit scale, for a model too big to hold whole. A
    tower-only config builds its tower, without a logit scale."""

    def __init__(self, config: Config, towers=("image", "text")):
        super().__init__()
        self.config = config
        towers = [t for t in towers if t in config.towers]
        if "image" in towers:
            setattr(self, kinds.vision(config).prefix[:-1], VISION[config.vision.kind](config))
        self.context_length = config.text.context_length if config.text is not None else None
        if "text" in towers:
            TEXT[config.text.kind][0](self, config.text, config.embed_dim)
        if config.whole:  # the logit scale (and SigLIP's bias), [1] in Paddle
            for name in kinds.text(config).scalars:
                setattr(self, name, self.create_parameter([1]))

    @property
    def dtype(self):
        return self.logit_scale.dtype if self.config.whole else paddle.float32  # a tower alone computes float32

    @materialized_views
    def states(self, tower: str, x) -> dict:
        """As the torch model's: one tower's hidden states, pooled output and embeds."""
        if tower == "image":
            return self.image_tower.states(x.astype(self.dtype))
        states: dict = {}
        TEXT[self.config.text.kind][1](self, x, states)
        return states

    @property
    def image_tower(self) -> nn.Layer:
        return getattr(self, kinds.vision(self.config).prefix[:-1])

    @materialized_views
    def encode_image(self, image):
        return self.image_tower(image.astype(self.dtype))

    @materialized_views
    def encode_text(self, text):
        return TEXT[self.config.text.kind][1](self, text)

    @materialized_views
    def forward(self, image, text):
        return self.logits(self.encode_image(image), self.encode_text(text))

    @materialized_views
    def logits(self, image_features, text_features):
        """(logits per image, per text) from the two towers' features (CLIP's, or SigLIP's sigmoid logits)."""
        if kinds.text(self.config).logits == "sigmoid":
            logits_per_image = sigmoid_logits(image_features, text_features, self.logit_scale, self.logit_bias)
            return logits_per_image, logits_per_image.t()
        image_features = image_features / image_features.norm(axis=1, keepdim=True)
        text_features = text_features / text_features.norm(axis=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * paddle.matmul(image_features, text_features, transpose_y=True)
        return logits_per_image, logits_per_image.t()
