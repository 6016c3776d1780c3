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


def model_of(nodeid: str) -> str | None:
    """The OpenAI variant a test runs on, from its id (`[RN50x4]`, `[RN50x4-seed1]`), or None."""
    test = nodeid.partition("::")[2]
    param = test[test.find("[") + 1:-1] if test.endswith("]") else ""
    return next((v for v in ALL if param == v or param.startswith(f"{v}-seed")), None)


def _size(variant: str) -> int:
    return sum(int(np.prod(shape)) for shape in layouts.HUB.shapes(config_of(variant)).values())


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, there when it is installed
def pytest_xdist_make_scheduler(config, log):
    """`make test`'s workers (`-n 2 --dist loadscope`): a test module's tests run on one worker, as they
    share its module fixtures and files, except that each model's tests form a scope of their own, so
    the big models' minutes spread over both workers. The modules go first, then the models, biggest
    first: the smallest models, seconds each, end the run and even out the two workers. (xdist's own
    `loadgroup` marks do not take with pytest 9: it renames items through an attribute pytest no longer
    reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadScopeScheduling

    class ByModuleAndModel(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            module, model = nodeid.partition("::")[0], model_of(nodeid)
            return f"{module}@{model}" if model else module

        def _assign_work_unit(self, node):
            if not self.ordered:  # the queue is whole at the first assignment
                self.ordered = True
                order = sorted(self.workqueue, key=lambda scope: (
                    "@" in scope, -_size(scope.partition("@")[2]) if "@" in scope else 0))
                self.workqueue = OrderedDict((scope, self.workqueue[scope]) for scope in order)
            super()._assign_work_unit(node)

    return ByModuleAndModel(config, log)


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
