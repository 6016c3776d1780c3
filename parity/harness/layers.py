"""Layer diagnosis: every module's output in both frameworks on the canonical pair (or another input pair),
and the first module, in execution order, beyond its bound. One tower of one framework is alive at a time."""
from __future__ import annotations

import gc
from dataclasses import asdict

import numpy as np

from .. import layouts
from ..config.schema import Config
from ..models.build import paddle_model, torch_model
from ..models.frameworks import import_paddle
from .gate import NOISE_FACTOR, Difference, float64
from .inputs import canonical_inputs, input_sizes
from .report import CANONICAL, LayerDiagnosis

def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output  # torch's MultiheadAttention: (out, weights)


def _record_torch_layers(model, image: np.ndarray, text: np.ndarray, towers) -> tuple[list[str], dict, dict]:
    """Every module's float32 output on the pair, and its float32 noise (float64 run)."""
    import torch

    order, outputs, noise = [], {}, {}

    def keep(name, _module, _inputs, output):
        out = _first(output)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            order.append(name)
            outputs[name] = out.detach().cpu().numpy().copy()  # a copy: in-place ReLUs overwrite their input

    def measure(name, _module, _inputs, output):
        out = _first(output)
        if name in outputs:
            noise[name] = float(np.max(np.abs(out.detach().cpu().numpy() - outputs[name])))

    device = next(model.parameters()).device

    def run(hook, dtype):
        handles = [m.register_forward_hook(lambda m, i, o, n=name: hook(n, m, i, o))
                   for name, m in model.named_modules() if name]
        try:
            with torch.no_grad():
                if "image" in towers:
                    model.encode_image(torch.from_numpy(image).to(device, dtype))
                if "text" in towers:
                    model.encode_text(torch.from_numpy(text).to(device))
        finally:
            for h in handles:
                h.remove()
    run(keep, torch.float32)
    with float64(model):
        run(measure, torch.float64)
    return order, outputs, noise


def _aligned(ref: np.ndarray, shape: tuple) -> np.ndarray | None:
    if ref.shape == shape:
        return ref
    if ref.ndim == 3 and ref.shape == (shape[1], shape[0], shape[2]):
        return ref.swapaxes(0, 1)  # torch's transformer is sequence-first [L, N, D], Paddle's batch-first [N, L, D]
    return None


def diagnose_layers(torch_sd: dict, paddle_sd: dict, config: Config, atol: float, rtol: float,
                    devices: dict[str, str] | None = None, noise_factor: float = NOISE_FACTOR,
                    towers=layouts.HUB.TOWERS, vocab_file=None, inputs: tuple | None = None) -> LayerDiagnosis:
    """Per module (same names in both models), on the canonical pair: max |delta|, cosine, bound, and the
    first module in execution order beyond its bound (its own float32 noise floor counts, as above).
    One tower of one framework is alive at a time. `devices`: each framework's device, as
    `select_device` gives them (default: the CPU). `inputs`: (image (1, 3, R, R), tokens (1, L), what
    they are) in place of the canonical pair."""
    devices = devices or {"torch": "cpu", "paddle": "cpu"}
    if inputs is None:
        resolution, context, kind = input_sizes(config)
        inputs = (*canonical_inputs(resolution, context, kind, vocab_file), CANONICAL)
    image, text, label = inputs
    towers = [t for t in towers if t in config.towers]
    paddle = import_paddle()
    rows: dict[str, dict] = {}
    order: list[str] = []
    for tower in towers:
        model = torch_model(torch_sd, config, device=devices["torch"], towers=(tower,))
        seen, outputs, noise = _record_torch_layers(model, image, text, (tower,))
        order += seen
        del model
        gc.collect()

        def compare_layer(name, _layer, _inputs, output):
            out = _first(output)
            if name not in outputs or not isinstance(out, paddle.Tensor):
                return
            got = out.numpy()
            ref = _aligned(outputs[name], tuple(got.shape))
            if ref is None:
                rows[name] = {"module": name, "note": f"shapes differ: torch {list(outputs[name].shape)}, "
                                                      f"paddle {list(got.shape)}"}
                return
            d = Difference.between(ref, got, atol, rtol, noise.get(name, 0.0), noise_factor)
            rows[name] = {"module": name, "shape": list(got.shape), **asdict(d), "noise_floor": noise.get(name, 0.0)}

        model = paddle_model(paddle_sd, config, device=devices["paddle"], towers=(tower,))
        handles = [layer.register_forward_post_hook(lambda l, i, o, n=name: compare_layer(n, l, i, o))
                   for name, layer in model.named_sublayers()]
        try:
            with paddle.no_grad():
                if tower == "image":
                    model.encode_image(paddle.to_tensor(image))
                else:
                    model.encode_text(paddle.to_tensor(text))
        finally:
            for h in handles:
                h.remove()
        del model
        outputs = {}  # the next tower's records replace these
        gc.collect()
    table = [rows[name] for name in dict.fromkeys(order) if name in rows]
    first = next((r["module"] for r in table if "passed" in r and not r["passed"]), None)
    return LayerDiagnosis(first_divergence=first, modules_compared=sum("passed" in r for r in table),
                          modules_torch_only=sorted(set(order) - set(rows)), table=table, inputs=label)
