"""Writing the graphs: each tower of parity's models as a static Paddle program (`paddle.jit.save`) or an
ONNX graph (torch's dynamo exporter), with a dynamic batch and the model's own context."""
from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path

import numpy as np

from ..harness.inputs import canonical_inputs
from .spec import INPUT_DTYPES, input_shape


def paddle_graph(plan, config, tower: str, staging: Path) -> None:
    from paddle.static import InputSpec

    from ..models.frameworks import import_paddle
    from ..models.build import paddle_model

    paddle = import_paddle()

    class Tower(paddle.nn.Layer):
        # paddle.jit matches arguments by name: forward's first parameter must be called `self`
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x) if tower == "image" else self.clip.encode_text(x)

    # parameters are named from a process-wide counter, and a .pdiparams holds them in their names' order:
    # fresh names make every export of one architecture name (and order) its parameters alike, whatever
    # the process built before, so a parameters file fits any export of the same model
    with paddle.utils.unique_name.guard():
        model = paddle_model(plan, config, towers=(tower,))
        paddle.jit.save(Tower(model).eval(), str(staging / tower),
                        input_spec=[InputSpec(input_shape(config, tower), INPUT_DTYPES[tower], tower)])


def onnx_graph(plan, config, tower: str, staging: Path) -> None:
    import torch

    from ..models.build import torch_model

    model = torch_model(plan, config, towers=(tower,)).float()

    class Tower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x) if tower == "image" else self.clip.encode_text(x)

    example = _example(config, tower)
    size = sum(p.numel() * 4 for p in model.parameters())
    # torch's dynamo exporter: the TorchScript one traced the ResNet attention pool's batch as a constant
    torch.onnx.export(Tower(model).eval(), (torch.from_numpy(example),), str(staging / f"{tower}.onnx"),
                      input_names=[tower], output_names=["features"], dynamo=True, verbose=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                      external_data=size > (1800 << 20))  # protobuf's 2 GiB limit on one file


def _example(config, tower: str) -> np.ndarray:
    image, text = canonical_inputs(config.vision.image_size, config.text.context_length, config.text.kind)
    return np.concatenate([image, image]) if tower == "image" else np.concatenate([text, text])


WRITERS = {"paddle-inference": paddle_graph, "onnx": onnx_graph}


def write_graphs(fmt: str, plan, config, towers, staging: Path) -> None:
    """Each tower's graph in the format `fmt`, written into the folder `staging`."""
    for tower in towers:
        with contextlib.redirect_stdout(sys.stderr):  # the exporters' progress lines: stdout is the result's
            WRITERS[fmt](plan, config, tower, staging)
        gc.collect()
