"""SigLIP's two towers in PyTorch, under transformers' own names (`SiglipVisionTransformer`'s and
`SiglipTextTransformer`'s state dicts, without their `vision_model.` / `text_model.` prefix), computing what
transformers computes. Mirrors `paddle_siglip.py` module by module. Plain `nn.LayerNorm` and a softmax in the
input's dtype, so that the harness can run it in float64 for its noise floor.

How SigLIP differs from CLIP: no class token and no pre-LayerNorm in the image tower, whose output is a
multi-head attention pool (a learned probe attending over the post-LayerNormed patches, then a LayerNorm
and an MLP with a residual); a text tower without a causal mask, pooled at its last position and
projected by a Linear with a bias; GELU in its tanh form; LayerNorm eps from the config (1e-6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu_tanh": lambda: nn.GELU(approximate="tanh"), "gelu": nn.GELU}


class SiglipAttention(nn.Module):
    """Self-attention, its q, k, v and output projections apart, all with biases; no mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        head = width // self.heads

        def split(t):  # [N, L, W] -> [N, heads, L, W / heads]
            return t.view(n, length, self.heads, head).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = (torch.matmul(q, k.transpose(2, 3)) * head ** -0.5).softmax(dim=-1)  # [N, heads, L, L]
        out = torch.matmul(weights, v).transpose(1, 2).reshape(n, length, width)  # [N, L, W]
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_width)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """A pre-LayerNorm residual block, batch-first ([N, L, W])."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = SiglipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = SiglipMLP(width, mlp_width, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(width, heads, mlp_width, activation, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
            if states is not None:
                states.append(x)
        return x


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, width: int, image_size: int, patch_size: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size)  # with a bias, unlike CLIP's
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2, width)  # no class token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x.type(self.patch_embedding.weight.dtype))  # [N, W, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid**2, W]
        return x + self.position_embedding.weight.to(x.dtype)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """The MAP head: a learned probe attends over the tokens (torch's fused-in_proj MultiheadAttention),
    then a LayerNorm and an MLP with a residual; the probe's output is the image embedding."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = SiglipMLP(width, mlp_width, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.to(x.dtype).repeat(x.shape[0], 1, 1)  # [N, 1, W]
        h = self.attention(probe, x, x, need_weights=False)[0]
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]  # [N, W]


class SiglipVisionTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, image_size: int, patch_size: int,
                 activation: str, eps: float):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(width, image_size, patch_size)
        self.encoder = SiglipEncoder(width, layers, heads, mlp_width, activation, eps)
        self.post_layernorm = nn.LayerNorm(width, eps=eps)
        self.head = SiglipMultiheadAttentionPoolingHead(width, heads, mlp_width, activation, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.states(x)["pooled"]

    def states(self, x: torch.Tensor) -> dict:
        """As transformers' SiglipVisionModel gives them: the last hidden state post-LayerNormed, the
        penultimate block's output, the MAP head's output (which is the image embedding)."""
        hidden = [self.embeddings(x)]
        last = self.post_layernorm(self.encoder(hidden[0], hidden))
        return {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": self.head(last)}


class SiglipTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, width: int, context_length: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]]  # [N, L, W]


class SiglipTextTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, vocab_size: int, context_length: int,
                 projection: int, activation: str, eps: float):
        super().__init__()
        self.embeddings = SiglipTextEmbeddings(vocab_size, width, context_length)
        self.encoder = SiglipEncoder(width, layers, heads, mlp_width, activation, eps)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, projection)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.states(ids)["pooled"]

    def states(self, ids: torch.Tensor) -> dict:
        """As transformers' SiglipTextModel gives them: no mask, pads attended to as in training; the
        pooled output is the last position (a pad, or the end of a full text) after the final LayerNorm,
        through `head`: the text embedding (no projection follows)."""
        hidden = [self.embeddings(ids)]
        last = self.final_layer_norm(self.encoder(hidden[0], hidden))
        return {"last_hidden_state": last, "penultimate_hidden_state": hidden[-2], "pooled": self.head(last[:, -1, :])}


def logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
           logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's logits per image, [images, texts]: scale.exp() · cos + bias (a sigmoid gives probabilities)."""
    image = F.normalize(image_embeds, dim=-1)
    text = F.normalize(text_embeds, dim=-1)
    return (text @ image.t() * logit_scale.exp() + logit_bias).t()
