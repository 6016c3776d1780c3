import gc

import numpy as np
import pytest

from parity import layouts
from parity.config import registry

FAST = ("RN50", "ViT-B/32")
ALL = tuple(e.name for e in registry.family("openai"))  # open_clip's: tests of their own


def variant_params(seeds=(0,)):
    """(model, seed) pairs: the two fast models at seed 0 plain, everything else behind `slow`."""
    return [pytest.param(v, s, id=f"{v}-seed{s}",
                         marks=() if (v in FAST and s == seeds[0]) else pytest.mark.slow)
            for v in ALL for s in seeds]


class Shape:
    """A stand-in tensor that has only a shape: enough for key maps and shape inference."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def shape_dict(config, layout="openai", **kw):
    shapes = layouts.HUB.shapes(config, **kw)
    if layout != "openai":
        shapes = layouts.get(layout).keymap.layout_shapes(shapes)
    return {k: Shape(v) for k, v in shapes.items()}


def config_of(name):
    return registry.get(name).config


FIGURES: list[str] = []


@pytest.fixture
def figures():
    """Lines printed in the terminal summary (the measured parity figures)."""
    return FIGURES


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()  # one model's weights alive at a time


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
