"""The fuzzer's starting corpus: small real files in each format, as parity and each format's own tools
write them, and the hostile files of the regression tests (tests/hostile_files.py), in small variants.

    python fuzz/seeds.py DIR      # writes DIR/<target>/<name>
"""
from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import hostile_files as hostile  # noqa: E402
from parity.config.schema import Config, TextConfig, VisionConfig  # noqa: E402

# a CLIP of a few kB: every key of the layout, so the seeds reach shape inference and the key checks
MICRO = Config(4, VisionConfig("vit", 1, 8, 4, 2, 32, 2, "quick_gelu", 1e-5),
               TextConfig(8, 1, 32, 4, 16, 2, "quick_gelu", 1e-5))


def _micro_state():
    from parity.testing.synthetic import draw, release_dtype
    import torch
    return {k: v.to(getattr(torch, release_dtype(k))) for k, v in draw(MICRO, 0).items()}


def _parity_files(state_np: dict) -> dict[str, bytes]:
    from parity.io.formats import pdparams, safetensors, torch_zip
    from parity.layouts import to_layout

    out = {}
    for name, write in (("parity.pt", lambda f: torch_zip.write(f, state_np)),
                        ("parity-torch.safetensors", lambda f: safetensors.write(f, state_np, {"parity.layout": "torch"}))):
        buffer = io.BytesIO()
        write(buffer)
        out[name] = buffer.getvalue()
    paddle_sd, _ = to_layout(state_np, "paddle")
    for name, write in (("parity.pdparams", lambda f: pdparams.write(f, paddle_sd, '{"buffers": {}, "dtypes": {}}')),
                        ("parity-paddle.safetensors", lambda f: safetensors.write(f, paddle_sd, {"parity.layout": "paddle"}))):
        buffer = io.BytesIO()
        write(buffer)
        out[name] = buffer.getvalue()
    return out


def _torchscript() -> dict[str, bytes]:
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.norm = torch.nn.BatchNorm1d(2)
            self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))

        def forward(self, x):
            return self.norm(self.fc(x))

    model = torch.nn.Sequential(Block(), torch.nn.Linear(2, 2).half().float()).eval()
    out = {}
    for name, make in (("traced.pt", lambda: torch.jit.trace(model, torch.zeros(2, 3))),
                       ("scripted.pt", lambda: torch.jit.script(model))):
        buffer = io.BytesIO()
        torch.jit.save(make(), buffer)
        out[name] = buffer.getvalue()
    return out


def _paddle_save(state_np: dict) -> bytes | None:
    try:
        from parity.models.frameworks import import_paddle
        paddle = import_paddle()
    except ImportError:
        return None
    buffer = io.BytesIO()
    paddle.save({k: paddle.to_tensor(v.astype(np.float32) if v.dtype == np.float16 else v)
                 for k, v in list(state_np.items())[:6]}, buffer)
    return buffer.getvalue()


def seeds() -> dict[str, dict[str, bytes]]:
    """{target: {file name: bytes}}."""
    import torch
    from safetensors.torch import save as st_save

    state = _micro_state()
    state_np = {k: v.numpy() for k, v in state.items()}
    base = hostile.torch_bytes(state)
    parity_files = _parity_files(state_np)
    mixed = {"f32": torch.ones(2, 3), "f16": torch.zeros(4, dtype=torch.float16),
             "bf16": torch.arange(3, dtype=torch.bfloat16), "i64": torch.tensor(5), "b": torch.tensor([True, False]),
             "t": torch.arange(6.0).reshape(2, 3).t()}  # a strided (transposed) view
    torch_zip = {
        "micro.pt": base, "parity.pt": parity_files["parity.pt"],
        "mixed.pt": hostile.torch_bytes(mixed),
        "wrapped.pt": hostile.torch_bytes({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}),
        "dup.pt": hostile.duplicate_entry(base, "token_embedding.weight"),
        "longer.pt": hostile.longer_entry(base, "token_embedding.weight"),
        "escape.pt": hostile.escape_key(base), "two-data-pkl.pt": hostile.two_data_pkl(base),
        "stride0.pt": hostile.stride_zero(), "deep.pt": hostile.deep_pt(200),
        "inflating.pt": hostile.inflating("storage", 1 << 16),
        "inflating-byteorder.pt": hostile.inflating("byteorder", 1 << 16),
    }
    pdparams = {
        "parity.pdparams": parity_files["parity.pdparams"],
        "pickle2.pdparams": pickle.dumps({k: v for k, v in list(state_np.items())[:8]}, protocol=2),
        "pickle4-nested.pdparams": pickle.dumps({"state_dict": {"a": ("a_var", np.ones(3, np.float32))},
                                                 "StructuredToParameterName@@": {"a": "a_var"}}, protocol=4),
        "deep.pdparams": hostile.deep_pickle(200), "deep-list.pdparams": hostile.deep_list_pickle(60),
    }
    saved = _paddle_save(state_np)
    if saved is not None:
        pdparams["paddle-save.pdparams"] = saved
    safetensors = {
        "parity-torch.safetensors": parity_files["parity-torch.safetensors"],
        "parity-paddle.safetensors": parity_files["parity-paddle.safetensors"],
        "library.safetensors": st_save({k: v.contiguous() for k, v in mixed.items()}, {"format": "pt"}),
        "aliased.safetensors": hostile.aliased_safetensors(4, 64), "inf-shape.safetensors": hostile.infinite_shape(),
    }
    from parity import layouts
    from parity.config import registry
    folder_json = {
        "hf-config.json": json.dumps(layouts.hf.config_to_json(registry.get("ViT-B/32").config)).encode(),
        "paddlenlp-rn50-config.json": json.dumps(layouts.paddlenlp.config_to_json(registry.get("RN50").config)).encode(),
        "open_clip_config.json": json.dumps(layouts.open_clip.config_to_json(registry.get("ViT-bigG-14").config)).encode(),
        "index.json": json.dumps({"metadata": {"total_size": 10}, "weight_map": {
            "logit_scale": "model-00001-of-00002.safetensors", "text_projection.weight": "model-00002-of-00002.safetensors"}}).encode(),
    }
    record = {  # parity's records as it writes them, and the red team's
        "paddle-rn50.json": json.dumps({"parity_version": "0.1.0", "model": "RN50", "source": {"file": "RN50.pt"},
                                        "buffers": {k: {"dtype": "int64", "value": 224} for k in
                                                    ("input_resolution", "context_length", "vocab_size")},
                                        "dtypes": {"logit_scale": "float16", "visual.conv1.weight": "float16"},
                                        "config": registry.get("RN50").config.to_dict()}).encode(),
        "wide-dtype.json": b'{"buffers": {"vocab_size": {"dtype": "S1000000", "value": [0, 0]}}}',
        "object-dtype.json": b'{"buffers": {"vocab_size": {"dtype": "O", "value": [[]]}}, "dtypes": {"a": "V8"}}',
    }
    json_docs = {**folder_json, **record, "manifest.json": json.dumps({"format": "onnx", "towers": ["image"],
                                                                       "gate": {"atol": 1e-5}, "files": {"a": "0" * 64}}).encode(),
                 "parity-config.json": json.dumps(registry.get("ViT-B/32").config.to_dict()).encode(),
                 "open_clip-model-cfg.json": json.dumps(json.loads(folder_json["open_clip_config.json"])["model_cfg"]).encode(),
                 "deep.json": b"[" * 40 + b"]" * 40, "many.json": b"[" + b"{}," * 2000 + b"{}]"}
    return {"torch_zip": torch_zip, "torchscript": _torchscript(), "pdparams": pdparams, "safetensors": safetensors,
            "folder_json": folder_json, "json": json_docs, "record": record}


def write(folder: Path) -> None:
    for target, files in seeds().items():
        (folder / target).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / target / name).write_bytes(data)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
