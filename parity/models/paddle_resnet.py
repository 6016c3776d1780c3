"""openai/CLIP's ModifiedResNet image tower in Paddle: the module tree of `torch_resnet.py`; BatchNorm holds
`_mean`/`_variance` and no `num_batches_tracked`, Linear weights are [in, out]."""
from __future__ import annotations

from .frameworks import import_paddle
from .paddle_ops import Linear

paddle = import_paddle()  # before `paddle.nn`, so its import-time warning stays quiet
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2D(inplanes, planes, 1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2D(planes, planes, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(planes)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AvgPool2D(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2D(planes, out, 1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(out)
        self.relu3 = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(
                ("-1", nn.AvgPool2D(stride)),
                ("0", nn.Conv2D(inplanes, out, 1, bias_attr=False)),
                ("1", nn.BatchNorm2D(out)),
            )

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        y = y + (x if self.downsample is None else self.downsample(x))
        return self.relu3(y)


class AttentionPool2d(nn.Layer):
    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = self.create_parameter([grid * grid + 1, embed_dim])
        self.k_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.c_proj = Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def _heads(self, x):
        n, length, width = x.shape
        # [N, L, C] -> [N, L, heads, C/heads] -> [N, heads, L, C/heads]
        return x.reshape([n, length, self.num_heads, width // self.num_heads]).transpose([0, 2, 1, 3])

    def forward(self, x):
        x = x.flatten(2).transpose([0, 2, 1])  # [N, C, H, W] -> [N, HW, C]
        x = paddle.concat([x.mean(axis=1, keepdim=True), x], axis=1)  # [N, HW+1, C]: the mean token leads
        x = x + self.positional_embedding.astype(x.dtype)
        # only the mean token's output is used, so only its query is computed
        q, k, v = self._heads(self.q_proj(x[:, :1])), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        head_dim = q.shape[-1]
        weights = F.softmax(paddle.matmul(q * head_dim ** -0.5, k, transpose_y=True))  # [N, heads, 1, HW+1]
        out = paddle.matmul(weights, v).transpose([0, 2, 1, 3]).flatten(2)  # [N, 1, C]
        return self.c_proj(out)[:, 0]  # [N, output_dim]


class ModifiedResNet(nn.Layer):
    def __init__(self, layers, output_dim: int, heads: int, input_resolution: int, width: int):
        super().__init__()
        self.input_resolution = input_resolution
        half = width // 2
        self.conv1 = nn.Conv2D(3, half, 3, stride=2, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2D(half, half, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(half)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2D(half, width, 3, padding=1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2D(2)
        inplanes = width
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2)), start=1):
            planes = width * 2 ** (i - 1)
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x):
        x = x.astype(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


BLOCKS = {"Bottleneck": Bottleneck}
