"""A test-only stand-in for `paddle.fluid`, which Paddle 3 removed and PASSL 0.0.4's CLIP still imports.

Why it is here: PASSL is an oracle of the tests (the `passl` layout is checked against PASSL's own CLIP),
and it cannot be imported on Paddle 3 without these few names. It maps each to its Paddle 3 home and is
installed only by the tests, never by parity: `install()` registers `paddle.fluid` in sys.modules.
Names: layers.matmul (PASSL's attention pool), dygraph.Layer/LayerList, data_feeder.convert_dtype,
framework.Variable, core.VarBase, optimizer.LarsMomentum (imported at module level by PASSL's solver).
"""
import sys
import types


def install():
    import paddle

    if "paddle.fluid" in sys.modules:
        return sys.modules["paddle.fluid"]

    def module(name: str, **names):
        made = types.ModuleType(name)
        made.__dict__.update(names)
        sys.modules[name] = made
        return made

    def matmul(x, y, transpose_x=False, transpose_y=False, alpha=1.0, name=None):  # fluid's scaled matmul
        out = paddle.matmul(x, y, transpose_x=transpose_x, transpose_y=transpose_y)
        return out if alpha == 1.0 else out * alpha

    from paddle.base.data_feeder import convert_dtype
    from paddle.incubate.optimizer import LarsMomentumOptimizer
    fluid = module("paddle.fluid",
                   layers=module("paddle.fluid.layers", matmul=matmul),
                   dygraph=module("paddle.fluid.dygraph", Layer=paddle.nn.Layer, LayerList=paddle.nn.LayerList),
                   data_feeder=module("paddle.fluid.data_feeder", convert_dtype=convert_dtype),
                   framework=module("paddle.fluid.framework", Variable=paddle.static.Variable),
                   core=module("paddle.fluid.core", VarBase=paddle.Tensor),
                   optimizer=module("paddle.fluid.optimizer", LarsMomentum=LarsMomentumOptimizer))
    fluid.__path__ = []  # a package, so that `import paddle.fluid.layers` finds the module above
    paddle.fluid = fluid
    return fluid
