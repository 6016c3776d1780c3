"""The reference and the check: parity's torch model's outputs on the canonical pair and the
photographs, each tower's outputs in its runtime held to them by verify's element-wise gate, and
ExportReport, what an export or a later check found."""
from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..harness.inputs import canonical_inputs, sample_set
from ..harness.gate import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR, Difference, float64
from .runtime import Runtime
from .spec import ExportError

GATE = ("atol", "rtol", "noise_factor")


def reference(plan, config, inputs: dict, towers) -> dict:
    """parity's torch model, one tower at a time: each input set's features in float32, and the float32
    noise floor (max |float32 - float64|) of each."""
    import torch

    from ..models.build import torch_model

    out = {}
    for tower in towers:
        model = torch_model(plan, config, towers=(tower,))
        encode = model.encode_image if tower == "image" else model.encode_text
        out[tower] = {}
        for name, x in inputs[tower].items():
            with torch.no_grad():
                fp32 = encode(torch.from_numpy(x)).double().numpy()
                with float64(model):
                    fp64 = encode(torch.from_numpy(x.astype(np.float64) if tower == "image" else x)).numpy()
            out[tower][name] = {"features": fp32.tolist(), "noise": float(np.abs(fp32 - fp64).max())}
        del model
        gc.collect()
    return out


def inputs_for(config, vocab_file=None) -> dict:
    """Per tower: the canonical input (batch 1) and the photographs (a batch of 3, then one at a time)."""
    v, t = config.vision, config.text
    image, text = canonical_inputs(v.image_size, t.context_length, t.kind, vocab_file)
    shots = sample_set(v.image_size, t.context_length, text=t.kind, vocab_file=vocab_file)
    return {"image": {"canonical": image, "photos": shots.images},
            "text": {"canonical": text, "photos": shots.tokens}}


def check(folder: Path, fmt: str, towers, ref: dict, inputs: dict, atol: float, rtol: float,
          noise_factor: float) -> dict:
    """Each tower's outputs in the runtime against the reference, by verify's gate: per input set, the
    Difference; the photographs run as a batch of 3 and then one at a time (one export, two batch sizes).
    The runtime runs in a child process of bounded memory (`Runtime`); features of another shape than
    the reference's fail the gate."""
    results = {}
    with Runtime(folder, fmt, towers) as runtime:
        for tower in towers:
            results[tower] = {}
            for name, x in inputs[tower].items():
                want = np.asarray(ref[tower][name]["features"], np.float64)
                width = want.shape[-1] if want.ndim == 2 else 0
                batches = [x[:3]] + [x[i:i + 1] for i in range(3, len(x))] if len(x) > 3 else [x]
                got = [runtime.run(tower, b, width) for b in batches]
                shapes = [g for g in got if isinstance(g, tuple)]
                if shapes or want.shape != (len(x), width):
                    shape, dtype = shapes[0] if shapes else ((len(x), width), "float32")
                    diff = Difference(float("inf"), float("inf"), float("nan"), float("nan"),
                                      f"shape: the graph gave {dtype} {list(shape)}", False)
                else:
                    diff = Difference.between(want, np.concatenate(got), atol, rtol, ref[tower][name]["noise"],
                                              noise_factor)
                results[tower][name] = asdict(diff)
    return results


# what a check without the checkpoint compares with, and all that it can prove
SELF_CHECK = ("the folder's own recorded reference (a pass proves only that the folder agrees with itself, not "
              "with any checkpoint)")


@dataclass
class ExportReport:
    """What an export or a later check found: per tower and input set, verify's Difference as a dict."""

    folder: str
    format: str
    towers: list[str]
    results: dict
    against: str  # "checkpoint <path>" or SELF_CHECK
    gate: dict  # the bounds the check applied: given, or parity's defaults (never a manifest's)
    seconds: float
    changed_files: list[str] = field(default_factory=list)  # files whose SHA-256 is not the manifest's
    manifest_gate: dict | None = None  # the gate the manifest records, where it is not `gate`: a record only

    @property
    def passed(self) -> bool:
        """Every output within the gate, and every file the one the manifest records (a changed file is not
        what was verified: a preprocess.json or tokenizer file changed since would deploy something else)."""
        return not self.changed_files and all(r["passed"] for tower in self.results.values() for r in tower.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        parts = [f"{tower} {name} |Δ| {r['max_abs']:.2e} (bound {r['bound']:.1e}, {r['bound_kind']})"
                 for tower, rows in self.results.items() for name, r in rows.items()]
        line = (f"{self.format} {self.folder}: {'PASS' if self.passed else 'FAIL'} against {self.against} — "
                + ", ".join(parts))
        if self.manifest_gate is not None:
            line += (f"; the manifest's own gate ({_gate_text(self.manifest_gate)}) differs from this check's "
                     f"({_gate_text(self.gate)}) and was not used")
        return line


def _gate_text(gate: dict) -> str:
    return ", ".join(f"{k} {gate.get(k)!r}" for k in GATE)


def is_number(value) -> bool:
    """A JSON number: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def given_gate(atol, rtol, noise_factor) -> dict:
    """The gate of a check: the bounds given, else parity's defaults; a manifest's never."""
    gate = {"atol": DEFAULT_ATOL if atol is None else atol, "rtol": DEFAULT_RTOL if rtol is None else rtol,
            "noise_factor": NOISE_FACTOR if noise_factor is None else noise_factor}
    for name, value in gate.items():
        if not is_number(value) or not 0 <= value < float("inf"):
            raise ExportError(f"the gate's {name} is {value!r}: a tolerance is a finite number, 0 or more")
    return gate

