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
optimisation, and oneDNN for the image tower only (see ONEDNN), onnxruntime's CPU provider. Exports are
float32.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__, layouts
from ..errors import CheckpointError, OutputExistsError, ParityError
from ..io.formats.atomic import atomic_folder, staging_folder
from ..io.formats import bounded_json
from ..io.formats.folders import refuse_overlap
from ..io.formats.source import FileSource, sha256
from ..harness.run import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR, Difference, float64
from ..harness.inputs import MEAN, STD, canonical_inputs, sample_set

FORMATS = ("paddle-inference", "onnx")
MANIFEST, REFERENCE, REPORT = "manifest.json", "reference.json", "report.md"
TOWERS = layouts.HUB.TOWERS
INPUT_DTYPES = {"image": "float32", "text": "int64"}
CHUNK = 1 << 22
# Paddle Inference on a CPU, measured with `make bench` on 2 cores: oneDNN halves RN50's image tower (8
# images: 0.51 s with it, 1.01 s without) and leaves a ViT's as it is, but makes every text tower about 15x
# slower (ViT-B/32, 8 texts: 5.4 s with it, 0.45 s without), so it runs for the image tower only
ONEDNN = {"image": True, "text": False}


class ExportError(ParityError):
    """An export folder that cannot be read or run: a missing, corrupt or foreign file (exit 2)."""


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- writing the graphs
def _paddle_graph(plan, config, tower: str, staging: Path) -> None:
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
                        input_spec=[InputSpec(_input_shape(config, tower), INPUT_DTYPES[tower], tower)])


def _onnx_graph(plan, config, tower: str, staging: Path) -> None:
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


def _input_shape(config, tower: str) -> list:
    r = config.vision.image_size
    return [None, 3, r, r] if tower == "image" else [None, config.text.context_length]


def _example(config, tower: str) -> np.ndarray:
    image, text = canonical_inputs(config.vision.image_size, config.text.context_length, config.text.kind == "bert")
    return np.concatenate([image, image]) if tower == "image" else np.concatenate([text, text])


WRITERS = {"paddle-inference": _paddle_graph, "onnx": _onnx_graph}


# ---------------------------------------------------------------- running them
def _graph_names(fmt: str, tower: str) -> list[str]:
    return [f"{tower}.json", f"{tower}.pdiparams"] if fmt == "paddle-inference" else [f"{tower}.onnx"]


def _regular(folder: Path, name: str, shown: Path | None = None) -> os.stat_result:
    """The stat of `name` in `folder`, not following a link: ExportError where it is missing, a symbolic
    link or not a regular file (a runtime handed a link or a FIFO would read outside the folder or hang).
    `shown`: the folder as messages name it (the runtime's process works inside it)."""
    shown = shown or folder
    try:
        st = os.stat(folder / name, follow_symlinks=False)
    except FileNotFoundError:
        raise ExportError(f"{shown / name}: missing from the export") from None
    except OSError as e:
        raise ExportError(f"{shown / name}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise ExportError(f"{shown / name}: a symbolic link; an export's files lie in its own folder")
    if not stat.S_ISREG(st.st_mode):
        raise ExportError(f"{shown / name}: not a regular file")
    return st


def runner(folder: Path, fmt: str, tower: str, shown: Path | None = None):
    """A function from an input batch (numpy) to the tower's features, in the format's own runtime, in
    this process (`check` runs it in a child process of bounded memory; see `_Runtime`). `shown`: the
    folder as messages name it, where `folder` is the working folder (".")."""
    folder = Path(folder)
    shown = shown or folder
    names = _graph_names(fmt, tower)
    for name in names:
        _regular(folder, name, shown)
    files = [folder / name for name in names]

    def failed(e: Exception, what: str) -> ExportError:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        error = ExportError(f"{shown}: {what} ({first})")
        error.memory = _out_of_memory(e)
        return error

    try:
        if fmt == "paddle-inference":
            from ..models.frameworks import import_paddle

            import_paddle()
            from paddle import inference

            c = inference.Config(str(files[0]), str(files[1]))
            c.disable_gpu()
            c.disable_glog_info()
            if ONEDNN[tower]:
                c.enable_mkldnn()
            else:
                c.disable_mkldnn()
            c.switch_ir_optim(True)
            c.set_cpu_math_library_num_threads(_threads())
            predictor = inference.create_predictor(c)

            def run(x: np.ndarray) -> np.ndarray:
                try:
                    handle = predictor.get_input_handle(predictor.get_input_names()[0])
                    handle.reshape(list(x.shape))
                    handle.copy_from_cpu(np.ascontiguousarray(x))
                    predictor.run()
                    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
                except Exception as e:  # a parameters file that loads but does not fit the program
                    raise failed(e, f"the {tower} tower's files do not fit each other") from None
            return run
        from ..models.frameworks import import_onnxruntime

        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(files[0]), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            try:  # another tower's graph, or one that wants another input, fails here: the folder's fault
                return session.run(None, {name: np.ascontiguousarray(x)})[0]
            except Exception as e:
                raise failed(e, f"the onnx runtime cannot run the {tower} tower") from None
        return run
    except ParityError:
        raise
    except Exception as e:  # the runtime's own error for a file it cannot read
        raise failed(e, f"the {fmt} runtime cannot load the {tower} tower") from None


# A runtime's allocation failure, in the words each one uses (onnxruntime's arena, Paddle's allocator,
# C++'s bad_alloc, Python's MemoryError)
_ALLOCATION = re.compile(r"bad_alloc|failed to allocate|out of memory|cannot allocate|resourceexhausted|"
                         r"memoryerror|std::length_error", re.IGNORECASE)


def _out_of_memory(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, MemoryError) or getattr(e, "memory", False) or _ALLOCATION.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


GiB, MiB = 1 << 30, 1 << 20
# The runtime's memory is bounded by RLIMIT_DATA (what a process maps writable: its heap, its threads'
# stacks; not the libraries' code, so Paddle's 0.7 GB of shared objects do not count, nor glibc's
# reserved but unused arena space) to a fixed allowance, a multiple of the graph files' size and a
# stack's worth per thread. Measured on 2 cores, the least bound under which a check passes (both towers,
# batches 3 and 1): ViT-B/32 (579 MB of graphs) 0.6 to 0.8 GB in onnxruntime and in Paddle Inference;
# RN50 (390 MB) 0.6 to 0.8 GB in onnxruntime, under 0.6 GB in Paddle; a tiny CLIP 0.2 GB (the children's
# peak RSS: ViT-B/32 0.5 GB onnx, 0.7 GB Paddle). The bound given them (4.1 to 4.7 GiB) is 5x that;
# Paddle's IR passes and oneDNN may keep a copy or two of the weights, and a CLIP's activations at batch
# 3 are tens of MB, so no CLIP comes near it, while a graph that asks for gigabytes beyond its weights
# fails at its first allocation past the bound (onnxruntime and Paddle both report it as an error),
# long before it can take the machine. (Starved well below its need, Paddle once hung instead of
# failing: the reply deadline below is for that.)
MEMORY_ALLOWANCE = 3 * GiB
MEMORY_PER_GRAPH_BYTE = 3
MEMORY_PER_THREAD = 64 * MiB  # a thread's stack (8 MiB) and what its allocator arena may hold
# How long the runtime may take to answer one request (load a tower and run a batch): a hung runtime
# fails the check instead of hanging it. ViT-B/32's slowest request takes 10 s on 2 cores.
REPLY_SECONDS, REPLY_SECONDS_PER_GIB = 300, 120
# The runtime's reply line (a JSON header) is ours; its length is bounded all the same
_LINE = 1 << 16


def _stored(st: os.stat_result) -> int:
    """The bytes a file holds: its size, or what its blocks hold where that is less (a sparse file)."""
    return min(st.st_size, st.st_blocks * 512)


def memory_bound(graph_bytes: int) -> int:
    """The memory a runtime's process may map for graphs of `graph_bytes` bytes (see MEMORY_ALLOWANCE)."""
    return MEMORY_ALLOWANCE + MEMORY_PER_GRAPH_BYTE * graph_bytes + MEMORY_PER_THREAD * _threads()


class _Runtime:
    """The folder's graphs in their runtime, in a child process: its memory bounded (`memory_bound`), so
    that a graph that asks for more than a CLIP can need fails alone, and without torch (with torch
    loaded in the same process, a Paddle predictor ran 5x slower). Inputs go down a pipe; the features
    come back up another, exactly batch x width float32 values, where the graph gave that shape."""

    def __init__(self, folder: Path, fmt: str, towers):
        self.folder, self.fmt = Path(folder), fmt
        # what the files hold on disk: a sparse file's apparent size (10 TB from `truncate`) says nothing
        graph_bytes = sum(_stored(_regular(self.folder, name)) for tower in towers for name in _graph_names(fmt, tower))
        self.bound = memory_bound(graph_bytes)
        self.deadline = REPLY_SECONDS + REPLY_SECONDS_PER_GIB * graph_bytes / GiB
        self.hung = False
        self.stderr = tempfile.TemporaryFile()
        root = str(Path(__file__).resolve().parents[2])  # where this parity is imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", "from parity.exporter.core import _serve; _serve()"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        except OSError as e:
            self.stderr.close()
            raise ExportError(f"the {fmt} runtime's process cannot be started ({e.strerror})") from None
        self._send({"folder": os.fsdecode(self.folder), "format": fmt, "bound": self.bound}, b"")

    def _send(self, header: dict, data: bytes) -> bool:
        try:
            self.proc.stdin.write(json.dumps(header).encode() + b"\n")
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):  # it died: `_died` says how
            return False

    def _exact(self, n: int) -> bytes | None:
        data = self.proc.stdout.read(n) if n else b""
        return data if len(data) == n else None

    def run(self, tower: str, x: np.ndarray, width: int) -> np.ndarray | tuple:
        """The tower's features for `x`: a [batch, width] float32 array, or, where the graph gave another
        shape or type, (shape, dtype)."""
        x = np.ascontiguousarray(x)
        expect = [len(x), width]
        header = {"tower": tower, "shape": list(x.shape), "dtype": str(x.dtype), "expect": expect}
        reply = data = None
        watchdog = threading.Timer(self.deadline, self._hang)
        watchdog.start()
        try:
            if self._send(header, x.tobytes()):
                line = self.proc.stdout.readline(_LINE)
                try:
                    reply = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    reply = None
            if isinstance(reply, dict) and "error" not in reply and reply.get("shape") == expect and \
                    reply.get("dtype") == "float32":
                data = self._exact(4 * expect[0] * expect[1])
                reply = reply if data is not None else None
        finally:
            watchdog.cancel()
        if not isinstance(reply, dict):
            raise self._died(tower)
        if "error" in reply:
            if reply.get("memory"):
                raise self._memory(tower)
            raise ExportError(str(reply["error"]))
        if reply.get("shape") != expect or reply.get("dtype") != "float32":
            return tuple(reply.get("shape") or ()), str(reply.get("dtype"))
        return np.frombuffer(data, np.float32).reshape(expect)

    def _hang(self) -> None:
        self.hung = True
        self.proc.kill()

    def _memory(self, tower: str) -> ExportError:
        return ExportError(f"{self.folder}: the {self.fmt} runtime ran out of its memory bound "
                           f"({self.bound / GiB:.1f} GiB) on the {tower} tower: the graph asks for more than a "
                           "CLIP needs")

    def _died(self, tower: str) -> ExportError:
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.stderr.seek(max(0, self.stderr.seek(0, os.SEEK_END) - 4096))
        said = self.stderr.read().decode(errors="replace")
        if self.hung:
            return ExportError(f"{self.folder}: the {self.fmt} runtime did not answer within {self.deadline:.0f} s on "
                               f"the {tower} tower: stopped")
        if _ALLOCATION.search(said):  # an allocation that failed where nothing could catch it
            return self._memory(tower)
        try:
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        except ValueError:
            how = f"killed by signal {-status}"
        return ExportError(f"{self.folder}: the {self.fmt} runtime's process died ({how}) on the {tower} tower")

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send({"quit": True}, b"")
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.proc.poll() is None:  # an error or an interrupt: no more waiting
            self.proc.kill()
        self.close()


def _serve() -> None:
    """The runtime's process (see `_Runtime`): bound its memory, then answer requests until told to quit.
    Its stdout is the reply channel; anything a library prints there goes to stderr instead."""
    import resource

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    hello = json.loads(requests.readline())
    bound = int(hello["bound"])
    resource.setrlimit(resource.RLIMIT_DATA, (bound, bound))
    folder, fmt = Path(hello["folder"]), hello["format"]
    # the runtimes take paths as str, and cannot open a folder named in bytes that are not UTF-8: they
    # are given the graphs' plain names inside it, the working folder
    os.chdir(folder)
    runs: dict = {}

    def reply(header: dict, data: bytes = b"") -> None:
        replies.write(json.dumps(header).encode() + b"\n")
        replies.write(data)
        replies.flush()

    while line := requests.readline():
        request = json.loads(line)
        if request.get("quit"):
            break
        tower, shape = request["tower"], request["shape"]
        buffer = bytearray(int(np.prod(shape, dtype=np.int64)) * np.dtype(request["dtype"]).itemsize)
        view, got = memoryview(buffer), 0
        while got < len(buffer):  # the parent writes exactly this many bytes
            n = requests.readinto(view[got:])
            if not n:
                return
            got += n
        x = np.frombuffer(buffer, request["dtype"]).reshape(shape)
        try:
            if tower not in runs:
                runs.clear()  # one tower's predictor at a time, as in the parent before
                gc.collect()
                runs[tower] = runner(Path("."), fmt, tower, folder)
            out = np.asarray(runs[tower](x))
        except Exception as e:  # noqa: BLE001 — every failure is reported, the parent words it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if not isinstance(e, ParityError):
                first = f"{folder}: the {fmt} runtime failed on the {tower} tower ({first})"
            reply({"error": first[:4000], "memory": _out_of_memory(e)})
            continue
        if list(out.shape) == request["expect"] and out.dtype == np.float32:
            reply({"shape": list(out.shape), "dtype": "float32"}, np.ascontiguousarray(out).tobytes())
        else:
            reply({"shape": list(out.shape), "dtype": str(out.dtype)})


# ---------------------------------------------------------------- the reference and the check
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


def _inputs(config, vocab_file=None) -> dict:
    """Per tower: the canonical input (batch 1) and the photographs (a batch of 3, then one at a time)."""
    v, t = config.vision, config.text
    image, text = canonical_inputs(v.image_size, t.context_length, t.kind == "bert", vocab_file)
    shots = sample_set(v.image_size, t.context_length, bert=t.kind == "bert", vocab_file=vocab_file)
    return {"image": {"canonical": image, "photos": shots.images},
            "text": {"canonical": text, "photos": shots.tokens}}


def check(folder: Path, fmt: str, towers, ref: dict, inputs: dict, atol: float, rtol: float,
          noise_factor: float) -> dict:
    """Each tower's outputs in the runtime against the reference, by verify's gate: per input set, the
    Difference; the photographs run as a batch of 3 and then one at a time (one export, two batch sizes).
    The runtime runs in a child process of bounded memory (`_Runtime`); features of another shape than
    the reference's fail the gate."""
    results = {}
    with _Runtime(folder, fmt, towers) as runtime:
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


# ---------------------------------------------------------------- the folder's other files
def _preprocess(config) -> dict:
    r = config.vision.image_size
    resize = ({"resize": [r, r], "center_crop": None} if config.text.kind == "bert" else  # cn_clip: straight to R x R
              {"resize": f"shorter side to {r}", "center_crop": [r, r]})
    return {"image_size": r, **resize, "interpolation": "bicubic", "rescale": 1 / 255, "mean": MEAN.tolist(),
            "std": STD.tolist(), "layout": "NCHW float32 RGB"}


def _tokenizer_files(config, vocab_file) -> dict[str, bytes]:
    t = config.text
    if t.kind == "bert":
        from ..text.wordpiece import WordPiece, default_vocabulary

        vocab = WordPiece(vocab_file or default_vocabulary())
        spec = {"kind": "bert-wordpiece", "vocabulary": "vocab.txt", "context_length": t.context_length,
                "lower_case": True, "cls": vocab.vocab["[CLS]"], "sep": vocab.vocab["[SEP]"], "pad": 0,
                "pooling": "[CLS]; padding (id 0) masked"}
        return {"vocab.txt": vocab.data, "tokenizer.json": json.dumps(spec, indent=2).encode()}
    from ..text.bpe import default_tokenizer, default_vocabulary

    tok = default_tokenizer()
    spec = {"kind": "clip-bpe", "vocabulary": "bpe_simple_vocab_16e6.txt.gz", "context_length": t.context_length,
            "start": tok.start, "end": tok.end, "pad": 0, "pooling": "the highest id (end of text)"}
    return {"bpe_simple_vocab_16e6.txt.gz": Path(default_vocabulary()).read_bytes(),
            "tokenizer.json": json.dumps(spec, indent=2).encode()}


def _copy(path: Path):
    def write(f):
        with open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                f.write(chunk)
    return write


# ---------------------------------------------------------------- the two entry points
def export(checkpoint, to: str, out, *, towers=TOWERS, config=None, force: bool = False, atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, noise_factor: float = NOISE_FACTOR) -> ExportReport:
    """Export CHECKPOINT's towers to `to` ("paddle-inference" or "onnx") in the folder `out`, then load each
    in its runtime and hold it to parity's torch model (canonical pair and photographs, batches of 3
    and 1). The folder is named only when complete; it is written when the check fails too (its
    manifest says so), and `ExportReport.passed` is the gate.

    >>> parity.export("ViT-B-32.pt", "paddle-inference", "clip-pi").passed    # doctest: +SKIP
    True
    """
    from ..api import computable
    from ..io.checkpoint import opened

    if to not in FORMATS:
        raise ParityError(f"unknown export format {to!r}: use {' or '.join(FORMATS)}")
    out = Path(out)
    # before anything is written: the export never lands in or over its source or its config file
    refuse_overlap(out, checkpoint, config if isinstance(config, (str, os.PathLike)) else None)
    towers = [t for t in TOWERS if t in towers]
    if not force and (out.exists() or out.is_symlink()):
        raise OutputExistsError(f"{out} already exists")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out.parent}: no such folder to write the export in")
    start = time.perf_counter()
    with opened(checkpoint, config=config) as ck:
        computable(ck)
        cfg = ck.config
        plan_torch = ck.plan_in(layouts.HUB.NAME)
        inputs = _inputs(cfg, ck.vocab_file)
        ref = reference(plan_torch, cfg, inputs, towers)
        staging = staging_folder(out.parent)  # the graphs' libraries write by name: never the output itself
        try:
            plan = plan_torch if to == "onnx" else ck.plan_in(layouts.paddle.NAME, "float32")
            for tower in towers:
                with contextlib.redirect_stdout(sys.stderr):  # the exporters' progress lines: stdout is the result's
                    WRITERS[to](plan, cfg, tower, staging)
                gc.collect()
            results = check(staging, to, towers, ref, inputs, atol, rtol, noise_factor)
            graphs = sorted(p.name for p in staging.iterdir() if p.is_file())
            report = ExportReport(str(out), to, towers, results, f"checkpoint {ck.path}",
                                  {"atol": atol, "rtol": rtol, "noise_factor": noise_factor},
                                  time.perf_counter() - start)
            extra = {"preprocess.json": json.dumps(_preprocess(cfg), indent=2).encode(),
                     **_tokenizer_files(cfg, ck.vocab_file), REFERENCE: json.dumps(ref).encode()}
            hashes = {name: sha256(staging / name) for name in graphs}
            hashes.update({name: hashlib.sha256(data).hexdigest() for name, data in extra.items()})
            manifest = {
                "parity_version": __version__, "format": to, "towers": towers,
                "source": {"file": str(ck.path), "sha256": ck.sha256, "layout": ck.layout, "model": ck.name},
                "config": cfg.to_dict(), "logit_scale": _logit_scale(plan_torch),
                "inputs": {tower: {"name": tower, "shape": _input_shape(cfg, tower), "dtype": INPUT_DTYPES[tower]}
                           for tower in towers},
                "outputs": {tower: {"name": "features", "shape": [None, cfg.embed_dim], "dtype": "float32"}
                            for tower in towers},
                "runtime": _runtime(to), "files": hashes,
                "verification": {"against": report.against, "gate": report.gate, "passed": report.passed,
                                 "results": results},
            }
            files = [(name, _copy(staging / name), _same(hashes[name])) for name in graphs]
            files += [(name, lambda f, d=data: f.write(d), None) for name, data in extra.items()]
            # a source named in bytes that are not UTF-8 is written as its escapes (the manifest's JSON escapes it too)
            files.append((REPORT, lambda f: f.write(_markdown(report, manifest).encode("utf-8", "backslashreplace")),
                          None))
            files.append((MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()), None))
            atomic_folder(out, files, force=force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _same(expected: str):
    def check(source):  # the copy, read back through its own descriptor
        if sha256(source) != expected:
            raise CheckpointError("a graph file changed while it was copied into the export")
    return check


def _markdown(report: ExportReport, manifest: dict) -> str:
    src = manifest["source"]
    lines = [f"# {manifest['format']} export of {src['model'] or 'an unregistered CLIP'}", "",
             f"Source: `{src['file']}` (SHA-256 `{src['sha256']}`, {src['layout']} layout); parity "
             f"{manifest['parity_version']}; runtime: {json.dumps(manifest['runtime'])}.", "",
             f"Checked against parity's torch model on {report.against}: |Δ| ≤ max(atol {report.gate['atol']} + "
             f"rtol {report.gate['rtol']}·|x|, {report.gate['noise_factor']} × float32's noise floor), element by "
             "element; the photographs ran as a batch of 3, then batches of 1.", "",
             f"**{'PASS' if report.passed else 'FAIL'}**", "",
             "| tower | inputs | max abs Δ | bound | bound from | cosine | passed |", "|---|---|---|---|---|---|---|"]
    for tower, rows in report.results.items():
        for name, r in rows.items():
            lines.append(f"| {tower} | {name} | {r['max_abs']:.2e} | {r['bound']:.1e} | {r['bound_kind']} | "
                         f"{r['cosine']:.8f} | {'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _logit_scale(plan) -> float:
    return float(np.exp(np.asarray(plan["logit_scale"](), dtype=np.float64)).reshape(()))


def _runtime(fmt: str) -> dict:
    if fmt == "paddle-inference":
        return {"library": "paddle.inference", "device": "cpu", "ir_optim": True, "onednn": ONEDNN,
                "threads": _threads()}
    return {"library": "onnxruntime", "providers": ["CPUExecutionProvider"], "threads": _threads()}


# ---------------------------------------------------------------- reading a folder back
GATE = ("atol", "rtol", "noise_factor")
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What a manifest's config may ask of the inputs and outputs when no checkpoint vouches for it (the
# inputs are built from these numbers before anything is compared). Every released CLIP fits with room:
# images are 448 px at the most (RN50x64, EVA-02-L), contexts 77 (CLIP), 52 (Chinese-CLIP) or 64
# (SigLIP), embed_dim 1,280 at the most (ViT-bigG); at these bounds the inputs are about 100 MB.
LIMITS = {"vision.image_size": 1024, "text.context_length": 1024, "embed_dim": 8192}
# The most a recorded float32 noise floor may be, as a fraction of its features' median magnitude (a
# median, so that one column made huge cannot raise it): the gate widens to noise_factor times it, so a
# reference that recorded a huge one would pass anything. float32's own, measured on synthetic weights:
# 2e-6 to 1.1e-4 of the median (RN50's photographs the noisiest), ViT-B/32 and a tiny CLIP 3e-6 at most.
RECORDED_NOISE = 1e-2


def _plain_name(name) -> bool:
    """A file name that can only mean a file in the folder itself."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and name == name.strip())


class _Folder:
    """An export folder, opened once: its files are opened relative to that descriptor, by plain names
    only, never through a symbolic link (a manifest names files; it must not be able to point parity,
    and what it reports about their hashes, at files outside the folder)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ExportError(f"{self.path}: no such folder") from None
        except NotADirectoryError:
            raise ExportError(f"{self.path}: not a folder: an export is a folder") from None
        except OSError as e:
            raise ExportError(f"{self.path}: cannot be opened ({e.strerror})") from None

    @contextlib.contextmanager
    def open(self, name: str, missing: str | None = None):
        """A FileSource for the plain name `name`; None where it is missing and `missing` is None, else
        ExportError with `missing` as the reason."""
        if not _plain_name(name):
            raise ExportError(f"{self.path}: {name!r} is not a file name in the folder")
        try:
            fd = os.open(name, _OPEN, dir_fd=self.fd)
        except FileNotFoundError:
            fd = None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ExportError(f"{self.path / name}: a symbolic link; an export's files lie in its own "
                                  "folder") from None
            raise ExportError(f"{self.path / name}: cannot be opened ({e.strerror})") from None
        if fd is None:
            if missing is not None:
                raise ExportError(f"{self.path / name}: {missing}")
            yield None
            return
        try:
            with FileSource(self.path / name, fd) as source:  # fstat: a FIFO or a device is refused
                yield source
        finally:
            os.close(fd)

    def json(self, name: str, kind, missing: str) -> dict:
        with self.open(name, missing) as source:
            return bounded_json.read_source(source, kind)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class _Manifest:
    format: str
    towers: list
    config: object
    gate: dict  # the gate recorded at export
    files: dict  # plain name -> SHA-256


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _manifest(folder: _Folder) -> _Manifest:
    """The manifest's fields that a check uses, each of its type (ExportError naming the first that is
    not): a malformed manifest is the folder's fault (exit 2), never a crash."""
    from ..config.schema import Config

    path = folder.path / MANIFEST
    manifest = folder.json(MANIFEST, bounded_json.MANIFEST, "missing: not a parity export folder")

    def bad(what: str) -> ExportError:
        return ExportError(f"{path}: not a parity export manifest ({what})")

    fmt, towers = manifest.get("format"), manifest.get("towers")
    if fmt not in FORMATS:
        raise bad(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if not isinstance(towers, list) or not towers or any(t not in TOWERS for t in towers) or \
            len(set(towers)) != len(towers):
        raise bad(f"towers {towers!r}: a list of {' and/or '.join(TOWERS)}")
    towers = [t for t in TOWERS if t in towers]
    if not isinstance(manifest.get("config"), dict):
        raise bad("no config object")
    try:
        cfg = Config.from_dict(manifest["config"])
    except ParityError as e:
        raise bad(f"config: {e}") from None
    if cfg.missing():
        raise bad(f"config: {', '.join(cfg.missing())} unknown")
    for key in ("inputs", "outputs"):
        given = manifest.get(key)
        want = {t: {"name": t, "shape": _input_shape(cfg, t), "dtype": INPUT_DTYPES[t]} for t in towers} \
            if key == "inputs" else \
            {t: {"name": "features", "shape": [None, cfg.embed_dim], "dtype": "float32"} for t in towers}
        if not isinstance(given, dict) or any(given.get(t) != want[t] for t in towers):
            raise bad(f"{key}: not those of its config's towers, {json.dumps(want)}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files: not an object of file names and their SHA-256")
    for name, digest in files.items():
        if not _plain_name(name):
            raise bad(f"files: {name!r} is not the name of a file in the folder")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"files: {name!r} has no SHA-256")
    verification = manifest.get("verification")
    gate = verification.get("gate") if isinstance(verification, dict) else None
    if not isinstance(gate, dict) or not all(_number(gate.get(k)) for k in GATE):
        raise bad(f"verification.gate: not numbers {', '.join(GATE)}")
    return _Manifest(fmt, towers, cfg, {k: gate[k] for k in GATE}, files)


def _within_limits(cfg, path: Path) -> None:
    """ExportError where a manifest's config asks for inputs or outputs larger than any CLIP's (LIMITS)."""
    for name, limit in LIMITS.items():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if value > limit:
            raise ExportError(f"{path}: not a parity export manifest ({name} {value}: more than the {limit} "
                              "of any CLIP; give the checkpoint to check it against)")


def _recorded(folder: _Folder, towers, inputs: dict, width: int) -> dict:
    """The reference recorded at export, each input set's features of exactly [batch, width] finite
    numbers and a noise floor: ExportError otherwise."""
    path = folder.path / REFERENCE
    ref = folder.json(REFERENCE, bounded_json.REFERENCE,
                      f"missing: no recorded reference for {', '.join(towers)}; give the checkpoint to compare with")
    out = {}
    for tower in towers:
        out[tower] = {}
        for name, x in inputs[tower].items():
            entry = ref.get(tower, {}).get(name) if isinstance(ref.get(tower), dict) else None
            want = (len(x), width)
            features = entry.get("features") if isinstance(entry, dict) else None
            noise = entry.get("noise") if isinstance(entry, dict) else None
            ok = (isinstance(features, list) and len(features) == want[0] and
                  all(isinstance(row, list) and len(row) == width and all(map(_number, row)) for row in features))
            if not ok or not _number(noise) or not 0 <= noise < float("inf"):
                raise ExportError(f"{path}: not a recorded reference: {tower} {name} wants features of "
                                  f"[{want[0]}, {want[1]}] numbers and a noise floor")
            features = np.asarray(features, np.float64)
            if not np.isfinite(features).all():
                raise ExportError(f"{path}: not a recorded reference: {tower} {name} holds a number that is not finite")
            scale = float(np.median(np.abs(features))) if features.size else 0.0
            if noise > RECORDED_NOISE * scale:
                raise ExportError(f"{path}: not a recorded reference: {tower} {name} records a float32 noise floor "
                                  f"of {noise:.3g}, more than {RECORDED_NOISE:g} of its features' median magnitude "
                                  f"({scale:.3g}); float32's own is far smaller, and it would widen the gate")
            out[tower][name] = {"features": features, "noise": float(noise)}
    return out


def _given_gate(atol, rtol, noise_factor) -> dict:
    """The gate of a check: the bounds given, else parity's defaults; a manifest's never."""
    gate = {"atol": DEFAULT_ATOL if atol is None else atol, "rtol": DEFAULT_RTOL if rtol is None else rtol,
            "noise_factor": NOISE_FACTOR if noise_factor is None else noise_factor}
    for name, value in gate.items():
        if not _number(value) or not 0 <= value < float("inf"):
            raise ExportError(f"the gate's {name} is {value!r}: a tolerance is a finite number, 0 or more")
    return gate


def folder_bytes(cfg) -> int:
    """The most an export of `cfg` may hold in files: its float32 weights twice over (a graph's weights,
    and room for what a runtime's format adds) and 256 MiB for programs, vocabularies and references.
    A file past it is no export of this model, and is refused before it is hashed or loaded."""
    weights = sum(math.prod(shape) for shape in layouts.HUB.shapes(cfg).values()) * 4
    return 2 * weights + 256 * MiB


def _changed(folder: _Folder, manifest, limit: int) -> list[str]:
    """The manifest's files whose SHA-256 is not the one it records (or that are missing), each read
    through the folder's descriptor, by its plain name, not following links. Every graph the check runs
    must be among them, and no file may be larger than `limit` (apparent or stored)."""
    unrecorded = [n for t in manifest.towers for n in _graph_names(manifest.format, t) if n not in manifest.files]
    if unrecorded:
        raise ExportError(f"{folder.path / MANIFEST}: not a parity export manifest (it records no SHA-256 for "
                          f"{', '.join(unrecorded)})")
    changed, total = [], 0
    for name, digest in sorted(manifest.files.items()):
        with folder.open(name) as source:
            if source is not None:
                total += source.size
                if total > limit:
                    raise ExportError(f"{source.name}: the export's files take more than the {limit} bytes an "
                                      "export of its model can hold")
            if source is None or sha256(source) != digest:
                changed.append(name)
    return changed


def verify_export(folder, checkpoint=None, *, config=None, atol: float | None = None, rtol: float | None = None,
                  noise_factor: float | None = None) -> ExportReport:
    """Load an export folder in its runtime and hold it, by verify's gate, to parity's torch model on
    `checkpoint` (the outputs computed afresh), or without one to the reference its manifest recorded,
    which proves only that the folder agrees with itself.

    The gate's bounds are those given, else parity's defaults: never the manifest's, which is the
    folder's own claim (a folder that records a loose gate could pass anything). Where the manifest
    records another gate, the report says so (`manifest_gate`). Nothing is built from the manifest's
    numbers before they are checked: with a checkpoint, its config must be the manifest's; without,
    the manifest's config must lie within LIMITS and the reference must have the shapes it says.
    ExportError for a missing, unreadable or malformed file, or a runtime that fails on it."""
    from ..api import computable
    from ..io.checkpoint import opened

    start = time.perf_counter()
    gate = _given_gate(atol, rtol, noise_factor)
    with _Folder(folder) as opened_folder:
        manifest = _manifest(opened_folder)
        fmt, towers, cfg = manifest.format, manifest.towers, manifest.config
        unlisted = [t for t in TOWERS if t not in towers and any(
            os.path.lexists(opened_folder.path / name) for name in _graph_names(fmt, t))]
        if unlisted:  # a graph the check would never run: the folder is not what its manifest says
            raise ExportError(f"{opened_folder.path}: holds the {' and '.join(unlisted)} tower's graph, which its "
                              f"manifest does not list ({', '.join(towers)} only)")
        vocab = None
        if cfg.text.kind == "bert":  # the BERT's vocabulary: the folder's, a regular file there, not a link
            with opened_folder.open("vocab.txt") as source:
                vocab = None if source is None else opened_folder.path / "vocab.txt"
        if checkpoint is not None:
            with opened(checkpoint, config=config) as ck:  # the checkpoint says what the model is
                computable(ck)
                if ck.config != cfg:
                    raise ExportError(f"{checkpoint} holds another model than the export ({ck.config.describe()}; "
                                      f"the export: {cfg.describe()})")
                inputs = _inputs(cfg, vocab)
                ref = reference(ck.plan_in(layouts.HUB.NAME), cfg, inputs, towers)
            against = f"checkpoint {checkpoint}"
        else:
            _within_limits(cfg, opened_folder.path / MANIFEST)
            inputs = _inputs(cfg, vocab)
            ref = _recorded(opened_folder, towers, inputs, cfg.embed_dim)
            against = SELF_CHECK
        changed = _changed(opened_folder, manifest, folder_bytes(cfg))
        results = check(opened_folder.path, fmt, towers, ref, inputs, **gate)
    return ExportReport(str(opened_folder.path), fmt, towers, results, against, gate, time.perf_counter() - start,
                        changed, manifest.gate if manifest.gate != gate else None)
