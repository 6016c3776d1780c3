"""Paddle layers as parity's Paddle model runs them on a CPU: the same values, without two slow paths of
Paddle 3 (strided views under matmul, a Linear's separate bias add)."""
from __future__ import annotations

import functools

from .frameworks import import_paddle

paddle = import_paddle()  # before `paddle.nn`, so its import-time warning stays quiet
from paddle import nn  # noqa: E402


def materialized_views(method):
    """Run `method` with Paddle's strided views off: with them on (Paddle 3's default), a matmul of a
    transposed tensor first copies it element by element, and the attention's 4-D transposes cost 30x a
    real transpose on a CPU (a ViT block 1.5x slower than torch's). Values are the same either way."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        flag = "FLAGS_use_stride_kernel"
        before = paddle.get_flags([flag])[flag]
        paddle.set_flags({flag: False})
        try:
            return method(*args, **kwargs)
        finally:
            paddle.set_flags({flag: before})
    return run


class Linear(nn.Linear):
    """nn.Linear with the bias added inside the GEMM (addmm), as torch's F.linear does: Paddle's own runs a
    matmul and then a separate add, up to 25% slower on a CPU. Same parameters, same state dict keys."""

    def forward(self, x):
        shape = x.shape
        # [..., in] -> [M, in] -> [M, out] -> [..., out]
        y = paddle.addmm(self.bias, x.reshape([-1, shape[-1]]), self.weight)
        return y.reshape(shape[:-1] + [self.weight.shape[1]])
