"""Forward time of one framework's CLIP, in a process of its own (two frameworks computing in one process
contend for OpenMP threads). Prints one JSON object: {"image": {batch: [seconds...]}, "text": {...}}.

    python benchmarks/forward.py torch RN50 --batches 1 8 --runs 5
    python benchmarks/forward.py paddle RN50 --batches 1 8 --runs 5
    python benchmarks/forward.py paddle-inference RN50 --export DIR    # a `parity export` folder
    python benchmarks/forward.py onnx RN50 --export DIR

torch is openai/CLIP's own model (`clip/model.py`, float32); paddle is parity's Paddle model, both on the
same synthetic weights and the same inputs; paddle-inference and onnx run an export of those weights in
its runtime, as `parity export` configures it. Only torch's process imports torch: the others read the
cached weights with safetensors' numpy reader (the JSON printed says which frameworks were loaded).
"""
import argparse
import json
import sys
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=["torch", "paddle", "paddle-inference", "onnx"])
    parser.add_argument("variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--export", help="the export folder (paddle-inference, onnx)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from parity import layouts
    from parity.config import registry
    from parity.harness.inputs import SAMPLES
    from parity.text.bpe import tokenize

    config = registry.get(args.variant).config
    # torch only in torch's process: an export runs without it, as a deployment does (torch's OpenMP and
    # oneDNN beside Paddle's made the Paddle Inference image tower 5x slower), and so does Paddle's dygraph
    state = None
    if args.framework == "torch":
        from parity.testing.synthetic import cached_state_dict
        state = cached_state_dict(config, 0)
    elif args.framework == "paddle":
        from safetensors.numpy import load_file

        from parity.harness.weights import GENERATOR_VERSION, cache_dir, slug
        state = load_file(cache_dir() / f"{slug(config)}-seed0-v{GENERATOR_VERSION}.safetensors")
    rng = np.random.default_rng(0)
    captions = list(SAMPLES.values())
    if args.framework in ("paddle-inference", "onnx"):
        from parity.exporter import runner

        class Exported:  # the runtime's callables, as the frameworks' models are called
            encode_image, encode_text = (runner(args.export, args.framework, t) for t in ("image", "text"))

        model, to_tensor = Exported, (lambda a: a)
        from contextlib import nullcontext as no_grad
    elif args.framework == "torch":
        import torch

        from parity.testing.official import build_official
        model = build_official({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in state.items()})
        no_grad, to_tensor = torch.no_grad, torch.from_numpy
    else:
        from parity.models.frameworks import import_paddle
        from parity.models.build import paddle_model
        paddle = import_paddle()
        model = paddle_model(layouts.to_layout(state, "paddle")[0], config)
        no_grad, to_tensor = paddle.no_grad, paddle.to_tensor
    del state
    result = {"image": {}, "text": {}}
    for batch in args.batches:
        image = rng.standard_normal((batch, 3, config.vision.image_size, config.vision.image_size), dtype=np.float32)
        text = tokenize([captions[i % len(captions)] for i in range(batch)])
        for tower, run, data in (("image", model.encode_image, image), ("text", model.encode_text, text)):
            tensor = to_tensor(data)
            times = []
            with no_grad():
                run(tensor)  # warm-up: first-call allocations and kernel selection
                for _ in range(args.runs):
                    start = time.perf_counter()
                    out = run(tensor)
                    float(out.sum())  # waits for the result on any device
                    times.append(time.perf_counter() - start)
            result[tower][str(batch)] = times
    result["loaded"] = sorted(m for m in ("torch", "paddle", "onnxruntime") if m in sys.modules)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
