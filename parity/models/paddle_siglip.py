"""SigLIP's two towers in Paddle: the module tree of `torch_siglip.py`. Linear weights are [in, out], and the
MAP head's attention has its q, k, v projections apart (`attention.{q,k,v}_proj`, `attention.out_proj`)
where torch's MultiheadAttention fuses them into `in_proj_weight` [3W, W]. Every other name is
transformers'."""
from __future__ import annotations

from .frameworks import import_paddle
from .paddle_ops import Linear

paddle = import_paddle()  # before `paddle.nn`, so its import-time warning stays quiet
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402


class GELUTanh(nn.Layer):
    def forward(self, x):
        return F.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_tanh": GELUTanh, "gelu": nn.GELU}


def _attend(q, k, v, heads: int):
    """Scaled dot-product attention of q [N, Lq, W] over k, v [N, L, W], per head; [N, Lq, W]."""
    n, width = q.shape[0], q.shape[-1]
    head = width // heads

    def split(t):  # [N, L, W] -> [N, heads, L, W / heads]
        return t.reshape([n, t.shape[1], heads, head]).transpose([0, 2, 1, 3])
    weights = F.softmax(paddle.matmul(split(q), split(k), transpose_y=True) * head ** -0.5, axis=-1)
    return paddle.matmul(weights, split(v)).transpose([0, 2, 1, 3]).reshape([n, q.shape[1], width])


class SiglipAttention(nn.Layer):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (Linear(width, width) for _ in range(4))

    def forward(self, x):
        return self.out_proj(_attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class SiglipMLP(nn.Layer):
    def __init__(self, width: int, mlp_width: int, activation: str):
        super().__init__()
        self.fc1 = Linear(width, mlp_width)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = Linear(mlp_width, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Layer):
    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, epsilon=eps)
        self.self_attn = SiglipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, epsilon=eps)
        self.mlp = SiglipMLP(width, mlp_width, activation)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Layer):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.layers = nn.LayerList([SiglipEncoderLayer(width, heads, mlp_width, activation, eps) for _ in range(layers)])

    def forward(self, x, states: list | None = None):
        for layer in self.layers:
            x = layer(x)
            if states is not None:
                states.append(x)
        return x


class SiglipVisionEmbeddings(nn.Layer):
    def __init__(self, width: int, image_size: int, patch_size: int):
        super().__init__()
        self.patch_embedding = nn.Conv2D(3, width, patch_size, stride=patch_size)
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2, width)

    def forward(self, x):
        x = self.patch_embedding(x)  # [N, W, grid, grid]
        x = x.flatten(2).transpose([0, 2, 1])  # [N, grid**2, W]
        return x + self.position_embedding.weight


class MapAttention(nn.Layer):
    """torch's MultiheadAttention of the MAP head, its fused in_proj split into Paddle Linears."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(width, width) for _ in range(4))

    def forward(self, query, x):
        return self.out_proj(_attend(self.q_proj(query), self.k_proj(x), self.v_proj(x), self.heads))


class SiglipMultiheadAttentionPoolingHead(nn.Layer):
    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.probe = self.create_parameter([1, 1, width])
        self.attention = MapAttention(width, heads)
        self.layernorm = nn.LayerNorm(width, epsilon=eps)
        self.mlp = SiglipMLP(width, mlp_width, activation)

    def forward(self, x):
        probe = self.probe.expand([x.shape[0], 1, x.shape[-1]])  # [N, 1, W]
        h = self.attention(probe, x)
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]  # [N, W]


class SiglipVisionTransformer(nn.Layer):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, image_size: int, patch_size: int,
                 activation: str, eps: float):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(width, image_size, patch_size)
        self.encoder = SiglipEncoder(width, layers, heads, mlp_width, activation, eps)
        self.post_layernorm = nn.LayerNorm(width, epsilon=eps)
        self.head = SiglipMultiheadAttentionPoolingHead(width, heads, mlp_width, activation, eps)

    def forward(self, x):
        return self.states(x)["pooled"]

    def states(self, x) -> dict:
        hidden = [self.embeddings(x)]
        last = self.post_layernorm(self.encoder(hidden[0], hidden))
        return {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": self.head(last)}


class SiglipTextEmbeddings(nn.Layer):
    def __init__(self, vocab_size: int, width: int, context_length: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]]  # [N, L, W]


class SiglipTextTransformer(nn.Layer):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, vocab_size: int, context_length: int,
                 projection: int, activation: str, eps: float):
        super().__init__()
        self.embeddings = SiglipTextEmbeddings(vocab_size, width, context_length)
        self.encoder = SiglipEncoder(width, layers, heads, mlp_width, activation, eps)
        self.final_layer_norm = nn.LayerNorm(width, epsilon=eps)
        self.head = Linear(width, projection)

    def forward(self, ids):
        return self.states(ids)["pooled"]

    def states(self, ids) -> dict:
        hidden = [self.embeddings(ids)]
        last = self.final_layer_norm(self.encoder(hidden[0], hidden))
        return {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": self.head(last[:, -1, :])}


def logits(image_embeds, text_embeds, logit_scale, logit_bias):
    """As torch_siglip.logits: [images, texts]."""
    image = F.normalize(image_embeds, axis=-1)
    text = F.normalize(text_embeds, axis=-1)
    return (paddle.matmul(text, image, transpose_y=True) * logit_scale.exp() + logit_bias).t()
