"""Running the graphs: each format in its own runtime (Paddle Inference, onnxruntime) on the CPU, and
that runtime in a child process (`Runtime`, `serve`) whose memory is bounded (RLIMIT_DATA, see
MEMORY_ALLOWANCE) and whose every reply has a deadline, so that a graph that asks for gigabytes, or a
runtime that hangs, fails alone as an ExportError. The child never imports torch."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..errors import ParityError
from .spec import ExportError, graph_names

# Paddle Inference on a CPU, measured with `make bench` on 2 cores: oneDNN halves RN50's image tower (8
# images: 0.51 s with it, 1.01 s without) and leaves a ViT's as it is, but makes every text tower about 15x
# slower (ViT-B/32, 8 texts: 5.4 s with it, 0.45 s without), so it runs for the image tower only
ONEDNN = {"image": True, "text": False}


def threads() -> int:
    """The CPU cores this process may run on: each runtime's thread count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def description(fmt: str) -> dict:
    """The runtime of the format `fmt`, as the manifest records it."""
    if fmt == "paddle-inference":
        return {"library": "paddle.inference", "device": "cpu", "ir_optim": True, "onednn": ONEDNN,
                "threads": threads()}
    return {"library": "onnxruntime", "providers": ["CPUExecutionProvider"], "threads": threads()}


def _regular(folder: Path, name: str, shown: Path | None = None) -> os.stat_result:
    """The stat of `name` in `folder`, not following a link: ExportError where it is missing, a symbolic
    link or not a regular file (a runtime handed a link or a FIFO would read outside the folder or hang).
    `shown`: the folder as messages name it (the runtime's process works inside it)."""
    shown = shown or folder
    try:
        st = os.stat(folder / name, follow_symlinks=False)
    except FileNotFoundError:
        raise ExportError("missing from the export", path=shown / name) from None
    except OSError as e:
        raise ExportError(f"cannot be read ({e.strerror})", path=shown / name) from None
    if stat.S_ISLNK(st.st_mode):
        raise ExportError("a symbolic link; an export's files lie in its own folder", path=shown / name)
    if not stat.S_ISREG(st.st_mode):
        raise ExportError("not a regular file", path=shown / name)
    return st


def runner(folder: Path, fmt: str, tower: str, shown: Path | None = None):
    """A function from an input batch (numpy) to the tower's features, in the format's own runtime, in
    this process (`check` runs it in a child process of bounded memory; see `Runtime`). `shown`: the
    folder as messages name it, where `folder` is the working folder (".")."""
    folder = Path(folder)
    shown = shown or folder
    names = graph_names(fmt, tower)
    for name in names:
        _regular(folder, name, shown)
    files = [folder / name for name in names]
    try:
        if fmt == "paddle-inference":
            return _paddle_runner(files, tower, shown)
        return _onnx_runner(files, tower, shown)
    except ParityError:
        raise
    except Exception as e:  # the runtime's own error for a file it cannot read
        raise _failed(shown, e, f"the {fmt} runtime cannot load the {tower} tower") from None


def _failed(shown: Path, e: Exception, what: str) -> ExportError:
    """ExportError for the folder `shown`: `what`, and the first line of the runtime's own error `e`."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    error = ExportError(f"{what} ({first})", path=shown)
    error.memory = _out_of_memory(e)
    return error


def _paddle_runner(files: list[Path], tower: str, shown: Path):
    """`runner` for Paddle Inference: a predictor of the program and parameters `files`."""
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
    c.set_cpu_math_library_num_threads(threads())
    predictor = inference.create_predictor(c)

    def run(x: np.ndarray) -> np.ndarray:
        try:
            handle = predictor.get_input_handle(predictor.get_input_names()[0])
            handle.reshape(list(x.shape))
            handle.copy_from_cpu(np.ascontiguousarray(x))
            predictor.run()
            return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        except Exception as e:  # a parameters file that loads but does not fit the program
            raise _failed(shown, e, f"the {tower} tower's files do not fit each other") from None
    return run


def _onnx_runner(files: list[Path], tower: str, shown: Path):
    """`runner` for onnxruntime: a CPU session of the graph `files[0]`."""
    from ..models.frameworks import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(files[0]), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        try:  # another tower's graph, or one that wants another input, fails here: the folder's fault
            return session.run(None, {name: np.ascontiguousarray(x)})[0]
        except Exception as e:
            raise _failed(shown, e, f"the onnx runtime cannot run the {tower} tower") from None
    return run


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
    return MEMORY_ALLOWANCE + MEMORY_PER_GRAPH_BYTE * graph_bytes + MEMORY_PER_THREAD * threads()


class Runtime:
    """The folder's graphs in their runtime, in a child process: its memory bounded (`memory_bound`), so
    that a graph that asks for more than a CLIP can need fails alone, and without torch (with torch
    loaded in the same process, a Paddle predictor ran 5x slower). Inputs go down a pipe; the features
    come back up another, exactly batch x width float32 values, where the graph gave that shape."""

    def __init__(self, folder: Path, fmt: str, towers):
        self.folder, self.fmt = Path(folder), fmt
        # what the files hold on disk: a sparse file's apparent size (10 TB from `truncate`) says nothing
        graph_bytes = sum(_stored(_regular(self.folder, name)) for tower in towers for name in graph_names(fmt, tower))
        self.bound = memory_bound(graph_bytes)
        self.deadline = REPLY_SECONDS + REPLY_SECONDS_PER_GIB * graph_bytes / GiB
        self.hung = False
        self.stderr = tempfile.TemporaryFile()
        root = str(Path(__file__).resolve().parents[2])  # where this parity is imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", "from parity.exporter.runtime import serve; serve()"],
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
        return ExportError(f"the {self.fmt} runtime ran out of its memory bound "
                           f"({self.bound / GiB:.1f} GiB) on the {tower} tower: the graph asks for more than a "
                           "CLIP needs", path=self.folder)

    def _died(self, tower: str) -> ExportError:
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.stderr.seek(max(0, self.stderr.seek(0, os.SEEK_END) - 4096))
        said = self.stderr.read().decode(errors="replace")
        if self.hung:
            return ExportError(f"the {self.fmt} runtime did not answer within {self.deadline:.0f} s on "
                               f"the {tower} tower: stopped", path=self.folder)
        if _ALLOCATION.search(said):  # an allocation that failed where nothing could catch it
            return self._memory(tower)
        try:
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        except ValueError:
            how = f"killed by signal {-status}"
        return ExportError(f"the {self.fmt} runtime's process died ({how}) on the {tower} tower", path=self.folder)

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


def serve() -> None:
    """The runtime's process (see `Runtime`): bound its memory, then answer requests until told to quit.
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
