"""PyTorch CLIP whose state dict is exactly openai/CLIP's, computing what `clip/model.py` computes.

Unlike the official model it also runs in float64 (its LayerNorm casts only half precision up), which
the harness uses to measure the float32 noise floor. Mirrors `paddle_clip.py` module by module.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import Config, TextConfig, VisionConfig


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        # every conv has stride 1; a stride > 1 is an average pool after conv2 (anti-aliased downsampling)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # the official names are "-1" (pool), "0" (conv), "1" (bn)
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        y += x if self.downsample is None else self.downsample(x)
        return self.relu3(y)


class AttentionPool2d(nn.Module):
    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # [N, C, H, W] -> [HW, N, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # [HW+1, N, C]: the mean token leads
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        # the same functional call as the official model, so float32 results match it bit for bit
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False)
        return x[0]  # the mean token's output: [N, output_dim]


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, anti-aliased strided blocks and an attention pool."""

    def __init__(self, layers, output_dim: int, heads: int, input_resolution: int, width: int):
        super().__init__()
        self.input_resolution = input_resolution
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2)), start=1):
            planes = width * 2 ** (i - 1)
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes half precision in float32 and every other dtype (float64 too) as is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}  # nn.GELU: the exact (erf) form


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


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
        self.proj = nn.Parameter(torch.empty(v.width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                              device=x.device)  # [N, 1, width]
        x = torch.cat([cls, x], dim=1)  # [N, grid**2 + 1, width]
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x[:, 0, :]) @ self.proj


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
    model.text_projection = nn.Parameter(torch.empty(t.width, embed_dim))


def encode_clip_text(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    x = model.token_embedding(text).type(model.dtype)  # [N, L, D]
    x = x + model.positional_embedding.type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
    x = model.ln_final(x).type(model.dtype)
    # the end-of-text token has the highest id in each sequence: its output is the text feature
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ model.text_projection


def bert_text(model: nn.Module, t: TextConfig, embed_dim: int) -> None:
    model.bert = Bert(t)
    model.text_projection = nn.Parameter(torch.empty(t.width, embed_dim))


def encode_bert_text(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    return model.bert(text)[:, 0, :] @ model.text_projection  # the [CLS] token's output is the text feature


# tower kind (parity.towers) -> how this file builds it: image towers as `visual`; text towers put their
# modules on the CLIP under the checkpoint's own names, and encode through it
VISION = {"vit": vit, "resnet": resnet}
TEXT = {"clip": (clip_text, encode_clip_text), "bert": (bert_text, encode_bert_text)}
BLOCKS = {"ResidualAttentionBlock": ResidualAttentionBlock, "Bottleneck": Bottleneck, "BertLayer": BertLayer}


class CLIP(nn.Module):
    """Built from a complete Config: every width, head count, activation and eps comes from it.
    `towers`: both, or one ("image", "text") with the logit scale, for a model too big to hold whole."""

    def __init__(self, config: Config, towers=("image", "text")):
        super().__init__()
        self.config = config
        if "image" in towers:
            self.visual = VISION[config.vision.kind](config)
        self.context_length = config.text.context_length
        if "text" in towers:
            TEXT[config.text.kind][0](self, config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.type(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return TEXT[self.config.text.kind][1](self, text)

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        return self.logits(self.encode_image(image), self.encode_text(text))

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """(logits per image, per text) from the two towers' features."""
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()
