import gc
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, set before torch or Paddle starts its
    # pool (two threads each would have four fight for two cores; measured: 2 threads on one model are
    # only ~1.3x faster than 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from parity import layouts  # noqa: E402
from parity.config import registry  # noqa: E402

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


class _Figures:
    """A test's measured figures, carried on its report: they reach the terminal summary from an xdist
    worker as from the main process."""

    def __init__(self, node):
        self.node = node

    def append(self, line: str):
        self.node.user_properties.append(("parity figure", line))


@pytest.fixture
def figures(request):
    """Lines printed in the terminal summary (the measured parity figures)."""
    return _Figures(request.node)


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()  # one model's weights alive at a time


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    """xdist's groups (`--dist loadgroup`): a test module's tests run on one worker, as they share its
    module fixtures and their files; a model's tests (a `variant` parameter, or the `variant_files`
    fixture's) form a group of their own, so the big models' minutes spread over both workers."""
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        variant = params.get("variant", params.get("variant_files"))  # a test's model, or its fixture's
        group = item.module.__name__ + (f"-{variant}" if isinstance(variant, str) else "")
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_runtest_logreport(report):
    if report.when == "call":
        FIGURES.extend(value for name, value in report.user_properties if name == "parity figure")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("parity figures")
        for line in sorted(FIGURES):  # xdist finishes tests in any order
            terminalreporter.write_line(line)


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), k
