"""PyTorch CLIP whose state dict is exactly openai/CLIP's, computing what `clip/model.py` computes.

Unlike the official model it also runs in float64 (its LayerNorm casts only half precision up), which
the harness uses to measure the float32 noise floor. Mirrors `paddle_clip.py` module by module.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .. import towers as kinds
from ..config.schema import Config, TextConfig, VisionConfig
from .torch_resnet import BLOCKS as RESNET_BLOCKS, ModifiedResNet
from .torch_siglip import SiglipEncoderLayer, SiglipTextTransformer, SiglipVisionTransformer, logits as sigmoid_logits


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes half precision in float32 and every other dtype (float64 too) as is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# nn.GELU: the exact (erf) form; gelu_tanh: its tanh approximation (transformers' gelu_pytorch_tanh)
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_width: int, activation: str, eps: float,
                 attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model, eps=eps)
        # not persistent: the official state dict has no mask, but it must follow .to(dtype/device)
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Sequence-first ([L, N, D]) stack of residual attention blocks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float,
                 attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, mlp_width, activation, eps, attn_mask)
                                         for _ in range(layers)])

    def forward(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        if states is None:
            return self.resblocks(x)
        for block in self.resblocks:  # the same blocks in turn, each output kept
            x = block(x)
            states.append(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, v: VisionConfig, output_dim: int):
        super().__init__()
        self.input_resolution = v.image_size
        self.conv1 = nn.Conv2d(3, v.width, v.patch_size, stride=v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(v.width))
        grid = v.image_size // v.patch_size
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, v.width))
        self.ln_pre = LayerNorm(v.width, eps=v.eps)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_width, v.activation, v.eps)
        self.ln_post = LayerNorm(v.width, eps=v.eps)
        # an image tower saved without its projection (CLIPVisionModel) has none
        self.proj = nn.Parameter(torch.empty(v.width, output_dim)) if output_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)
        return pooled if self.proj is None else pooled @ self.proj

    def pool(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        """The post-LayerNormed class token; `states` gets the blocks' input, then each block's output."""
        x = self.conv1(x)  # [N, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                              device=x.device)  # [N, 1, width]
        x = torch.cat([cls, x], dim=1)  # [N, grid**2 + 1, width]
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        hidden = None if states is None else [x.permute(1, 0, 2)]
        x = self.transformer(x.permute(1, 0, 2), hidden).permute(1, 0, 2)  # NLD -> LND -> NLD
        if states is not None:
            states.extend(h.permute(1, 0, 2) for h in hidden)  # LND -> NLD, the blocks' input first
        return self.ln_post(x[:, 0, :])

    def states(self, x: torch.Tensor) -> dict:
        """What users of an image tower alone consume (transformers' CLIPVisionModel's outputs): the last
        and penultimate hidden states [N, grid**2 + 1, width] (no post-LayerNorm), the pooled output
        (the post-LayerNormed class token) and, with a projection, the embeds."""
        hidden: list = []
        pooled = self.pool(x, hidden)
        return tower_outputs(hidden, hidden[-1], pooled, None if self.proj is None else pooled @ self.proj)


class BertEmbeddings(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(t.vocab_size, t.width)
        self.position_embeddings = nn.Embedding(t.positions, t.width)
        self.token_type_embeddings = nn.Embedding(t.types, t.width)
        self.LayerNorm = LayerNorm(t.width, eps=t.eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)[None].expand_as(ids)  # [N, L]
        # every token is of type 0: Chinese-CLIP encodes one sentence
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions) +
                              self.token_type_embeddings(torch.zeros_like(ids)))


class BertSelfAttention(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.heads = t.heads
        self.query, self.key, self.value = (nn.Linear(t.width, t.width) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape

        def split(y):  # [N, L, W] -> [N, heads, L, W / heads]
            return y.view(n, length, self.heads, width // self.heads).permute(0, 2, 1, 3)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(width // self.heads) + mask
        out = torch.matmul(scores.softmax(dim=-1), v)  # [N, heads, L, W / heads]
        return out.permute(0, 2, 1, 3).reshape(n, length, width)


class BertResidual(nn.Module):
    """dense, then the post-LayerNorm of the residual sum (BERT's SelfOutput and Output)."""

    def __init__(self, width_in: int, t: TextConfig):
        super().__init__()
        self.dense = nn.Linear(width_in, t.width)
        self.LayerNorm = LayerNorm(t.width, eps=t.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.self = BertSelfAttention(t)  # the checkpoint's name: attention.self.query, ...
        self.output = BertResidual(t.width, t)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class ErfGELU(nn.Module):
    """GELU written out with erf, as BERT's own code (and Chinese-CLIP's) computes it: the same function as
    nn.GELU, whose fused kernel rounds otherwise (2e-6 apart on a text feature)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class BertIntermediate(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.dense = nn.Linear(t.width, t.mlp_width)
        self.act = ErfGELU() if t.activation == "gelu" else ACTIVATIONS[t.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.attention = BertAttention(t)
        self.intermediate = BertIntermediate(t)
        self.output = BertResidual(t.mlp_width, t)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, t: TextConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(t) for _ in range(t.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Bert(nn.Module):
    """Chinese-CLIP's text tower: a BERT without a pooler, batch-first ([N, L, W])."""

    def __init__(self, t: TextConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(t)
        self.encoder = BertEncoder(t)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        # padding (id 0) masked out additively, with BERT's -10000 rather than -inf
        mask = (1.0 - (ids != 0).to(x.dtype))[:, None, None, :] * -10000.0  # [N, 1, 1, L]
        return self.encoder(x, mask)


def tower_outputs(hidden: list, last, pooled, embeds) -> dict:
    """A tower's outputs by transformers' names: `hidden` holds the blocks' input, then each block's output."""
    out = {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": pooled}
    return out if embeds is None else {**out, "embeds": embeds}


def causal_mask(length: int) -> torch.Tensor:
    # additive mask: -inf above the diagonal, so token t attends to tokens <= t; made on the CPU even
    # when the model is built on the meta device (it is in no state dict)
    return torch.full((length, length), float("-inf"), device="cpu").triu_(1)


def vit(config: Config) -> nn.Module:
    return VisionTransformer(config.vision, config.embed_dim)


def resnet(config: Config) -> nn.Module:
    v = config.vision
    return ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_size, v.width)


def clip_text(model: nn.Module, t: TextConfig, embed_dim: int) -> None:
    # CLIP's own text tower, under openai/CLIP's top-level names (its state dict has no text prefix)
    model.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_width, t.activation, t.eps,
                                    causal_mask(t.context_length))
    model.token_embedding = nn.Embedding(t.vocab_size, t.width)
    model.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
    model.ln_final = LayerNorm(t.width, eps=t.eps)
    # a text tower saved without its projection (CLIPTextModel) has none
    model.text_projection = nn.Parameter(torch.empty(t.width, embed_dim)) if embed_dim is not None else None


def encode_clip_text(model: nn.Module, text: torch.Tensor, states: dict | None = None) -> torch.Tensor:
    x = model.token_embedding(text).type(model.dtype)  # [N, L, D]
    x = x + model.positional_embedding.type(model.dtype)
    hidden = None if states is None else [x.permute(1, 0, 2)]
    x = model.transformer(x.permute(1, 0, 2), hidden).permute(1, 0, 2)  # NLD -> LND -> NLD
    x = model.ln_final(x).type(model.dtype)
    # the end-of-text token has the highest id in each sequence: its output is the text feature
    pooled = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
    embeds = pooled if model.text_projection is None else pooled @ model.text_projection
    if states is not None:  # transformers' CLIPTextModel's outputs: its last hidden state is the normed one
        states.update(tower_outputs([h.permute(1, 0, 2) for h in hidden], x, pooled,
                                    None if model.text_projection is None else embeds))
    return embeds


def bert_text(model: nn.Module, t: TextConfig, embed_dim: int) -> None:
    model.bert = Bert(t)
    model.text_projection = nn.Parameter(torch.empty(t.width, embed_dim))


def encode_bert_text(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    return model.bert(text)[:, 0, :] @ model.text_projection  # the [CLS] token's output is the text feature


def siglip_vit(config: Config) -> nn.Module:
    v = config.vision
    return SiglipVisionTransformer(v.width, v.layers, v.heads, v.mlp_width, v.image_size, v.patch_size, v.activation, v.eps)


def siglip_text(model: nn.Module, t: TextConfig, embed_dim: int) -> None:
    model.text_model = SiglipTextTransformer(t.width, t.layers, t.heads, t.mlp_width, t.vocab_size, t.context_length,
                                             embed_dim, t.activation, t.eps)


def encode_siglip_text(model: nn.Module, text: torch.Tensor, states: dict | None = None) -> torch.Tensor:
    out = model.text_model.states(text)
    if states is not None:
        states.update(out)
    return out["pooled"]  # the head's output  # the head's output


# tower kind (parity.towers) -> how this file builds it: image towers under their hub prefix (`visual`,
# `vision_model`); text towers put their modules on the CLIP under the checkpoint's own names, and encode
# through it
VISION = {"vit": vit, "resnet": resnet, "siglip_vit": siglip_vit}
TEXT = {"clip": (clip_text, encode_clip_text), "bert": (bert_text, encode_bert_text),
        "siglip_text": (siglip_text, encode_siglip_text)}
BLOCKS = {"ResidualAttentionBlock": ResidualAttentionBlock, **RESNET_BLOCKS, "BertLayer": BertLayer,
          "SiglipEncoderLayer": SiglipEncoderLayer}


class CLIP(nn.Module):
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
        if config.whole:  # the logit scale (0-d in CLIP; SigLIP's scale and bias [1])
            for name, shape in kinds.text(config).scalars.items():
                setattr(self, name, nn.Parameter(torch.empty(shape)))
        else:  # the dtype the tower computes in (`dtype`), in no state dict; made on the CPU, as the causal mask
            self.register_buffer("compute_dtype", torch.zeros((), device="cpu"), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return (self.logit_scale if self.config.whole else self.compute_dtype).dtype

    def states(self, tower: str, x: torch.Tensor) -> dict:
        """One tower's outputs as its users consume them, for a tower alone: `last_hidden_state`,
        `penultimate_hidden_state` ([N, L, width]), `pooled` and, with a projection, `embeds`."""
        if tower == "image":
            return self.image_tower.states(x.type(self.dtype))
        states: dict = {}
        TEXT[self.config.text.kind][1](self, x, states)
        return states

    @property
    def image_tower(self) -> nn.Module:
        return getattr(self, kinds.vision(self.config).prefix[:-1])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_tower(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return TEXT[self.config.text.kind][1](self, text)

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        return self.logits(self.encode_image(image), self.encode_text(text))

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """(logits per image, per text) from the two towers' features: CLIP's scaled cosines, or SigLIP's
        sigmoid logits (scaled cosines plus a bias)."""
        if kinds.text(self.config).logits == "sigmoid":
            logits_per_image = sigmoid_logits(image_features, text_features, self.logit_scale, self.logit_bias)
            return logits_per_image, logits_per_image.t()
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()
