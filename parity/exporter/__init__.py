"""Verified export: a checkpoint's towers as deployable graphs (Paddle Inference, ONNX), each loaded back in
its own runtime and held to parity's torch model by `verify`'s element-wise gate before the folder is named.

A folder holds, per tower, the graph files (`image.json` + `image.pdiparams`, or `image.onnx`), with a
dynamic batch and the model's own context; `preprocess.json`; the tokenizer's files; `manifest.json`:
the source and its SHA-256, parity's version, the inputs and outputs, every file's SHA-256, and the
result of the check; `reference.json`: the torch outputs it compared with, and their float32 noise
floors; `report.md`: the check, for a reader. `verify_export` repeats the check later, against the
checkpoint or, without it, against the recorded reference.

A folder handed to `verify_export` is input to judge, not a party to trust: the gate is the caller's or
parity's, never the manifest's; every field of the manifest is checked for its type, and its numbers
against the checkpoint (or sane limits) before anything is built from them; its names are plain file
names, opened in the folder without following links; and its graphs run in a child process whose
memory is bounded, so a graph that asks for gigabytes fails alone. Every failure is an ExportError.

The runtimes run on the CPU, in that child process (which never imports torch): Paddle Inference with IR
optimisation, and oneDNN for the image tower only (see runtime.ONEDNN), onnxruntime's CPU provider.
Exports are float32.

The package, by job: `spec` (formats, file names, inputs and outputs, ExportError), `graphs` (the graphs
written), `runtime` (the graphs run, in a bounded child process), `verification` (the reference, the
check, ExportReport), `manifest` (manifest.json written, and a folder read back), `contents` (the
folder's other files, and the folder written), `core` (the two entry points).
"""
from .core import export, verify_export
from .graphs import paddle_graph
from .runtime import runner
from .spec import ExportError
from .verification import ExportReport

__all__ = ["ExportError", "ExportReport", "export", "paddle_graph", "runner", "verify_export"]
