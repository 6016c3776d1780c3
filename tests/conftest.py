import gc

import numpy as np
import pytest

from parity.keymap import paddle_shapes, torch_shapes
from parity.variants import VARIANTS

FAST = ("RN50", "ViT-B/32")
ALL = tuple(VARIANTS)


def variant_params(seeds=(0,)):
    """(variant, seed) pairs: the two fast variants at seed 0 plain, everything else behind `slow`."""
    return [pytest.param(v, s, id=f"{v}-seed{s}",
                         marks=() if (v in FAST and s == seeds[0]) else pytest.mark.slow)
            for v in ALL for s in seeds]


class Shape:
    """A stand-in tensor that has only a shape: enough for key maps and shape inference."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def shape_dict(config, layout="torch", **kw):
    shapes = torch_shapes(config, **kw) if layout == "torch" else paddle_shapes(config)
    return {k: Shape(v) for k, v in shapes.items()}


FIGURES: list[str] = []


@pytest.fixture
def figures():
    """Lines printed in the terminal summary (the measured parity figures)."""
    return FIGURES


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()  # one variant's models alive at a time


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("parity figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), k
