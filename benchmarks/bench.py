"""`make bench`: conversion, forward speed, `make verify-all`, open_clip's ViT-bigG-14 and the exports
(Paddle Inference, onnxruntime), measured side by side on this machine.

Every command runs in a process of its own, as a user runs it; wall time is measured around the process
and peak RSS is the process's own (`wait4`). Every figure is the median of `--runs` runs, interleaved
(cp, parity, naive, cp, ...), and every comparison is a ratio of two figures from the same run of this
script. Writes reports/bench.json (every run) and reports/bench.md.

    python benchmarks/bench.py                  # everything (about an hour on 2 cores)
    python benchmarks/bench.py --quick          # one small variant each, one run: a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PARITY = str(Path(sys.executable).parent / "parity")
CONVERT_VARIANTS = ("ViT-B/32", "ViT-L/14", "RN50x64")
ALL_VARIANTS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")
TARGETS = {  # the issues' targets, on a 2-core machine
    "convert_vs_moved": 2.5,  # parity convert ViT-B/32 -> paddle: wall <= 2.5x cp of the source plus cp of the output
    "big_convert_vs_moved": 1.5,  # ... and ViT-bigG-14's 9.46 GiB file <= 1.5x
    "naive_vs_convert": 3.0,  # ... and at least 3x faster than the naive script
    "rss_vs_size": 1.3,  # peak RSS above the idle baseline <= 1.3x the checkpoint's size
    "paddle_vs_torch": 1.2,  # Paddle forward / official torch forward, every variant and tower
    "verify_all_seconds": 300.0,
    "big_verify_rss": 20e9,  # parity verify of a synthetic ViT-bigG-14 on this 24 GB machine: peak RSS <= 20 GB
    "exported_vs_torch": 1.2,  # an exported tower in its runtime / torch eager: does the export reach torch's speed?
}
EXPORT_VARIANTS = ("RN50", "ViT-B/32")
RUNTIMES = ("paddle-inference", "onnx")
BIG = "ViT-bigG-14"


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` to its end: wall seconds, peak RSS bytes, stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.read().decode()[-3000:]}")
        out.seek(0)
        return {"seconds": wall, "rss": usage.ru_maxrss * 1024, "stdout": out.read().decode()}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def python_json(code: str, env: dict | None = None):
    """Run Python `code` in a child that prints one JSON value: this process imports no framework, since a
    child's peak RSS counts the memory it was forked with."""
    return json.loads(measure([PYTHON, "-c", code], env)["stdout"].strip().splitlines()[-1])


def machine() -> dict:
    versions = python_json("import json, platform, warnings; warnings.simplefilter('ignore'); import numpy, torch, "
                           "paddle, parity; print(json.dumps({'python': platform.python_version(), 'parity': "
                           "parity.__version__, 'torch': torch.__version__, 'paddle': paddle.__version__, "
                           "'numpy': numpy.__version__}))")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory, **versions,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def release_archive(variant: str) -> Path:
    return Path(python_json(f"import json; from parity.testing.synthetic import release_archive; "
                            f"print(json.dumps(str(release_archive({variant!r}))))"))


# ---------------------------------------------------------------- 1. conversion
def bench_conversion(variants, runs: int, work: Path, env: dict) -> dict:
    """Each conversion against the bytes it moves: `cp` of its source plus `cp` of its output (a reference
    output parity made first), and against the naive script; interleaved, in processes of their own."""
    idle = [measure([PARITY, "--version"], env) for _ in range(runs)]
    result = {"idle_rss": median(idle, "rss"), "variants": {}}
    for variant in variants:
        archive = release_archive(variant)
        name = variant.replace("/", "-").replace("@", "-")
        pdparams = work / f"{name}.pdparams"
        measure([PARITY, "convert", str(archive), "--to", "paddle", "-o", str(pdparams), "--force"], env)
        rows = {}
        for target, src, suffix in (("paddle", archive, ".pdparams"), ("torch", pdparams, ".pt"),
                                    ("safetensors", archive, ".safetensors")):
            out, reference = work / f"out{suffix}", work / f"reference{suffix}"
            measure([PARITY, "convert", str(src), "--to", target, "-o", str(reference), "--force"], env)
            copies = [work / "copy-of-source", work / "copy-of-output"]
            commands = {"moved": ["sh", "-c", f"cp '{src}' '{copies[0]}' && cp '{reference}' '{copies[1]}'"],
                        "parity": [PARITY, "convert", str(src), "--to", target, "-o", str(out)],
                        "naive": [PYTHON, str(ROOT / "benchmarks" / "naive.py"), target, str(src), str(out)]}
            samples = {method: [] for method in commands}
            for _ in range(runs):
                for method, cmd in commands.items():
                    for path in (out, *copies):
                        path.unlink(missing_ok=True)
                    run = measure(cmd, env)
                    run["output_bytes"] = (copies[1] if method == "moved" else out).stat().st_size
                    del run["stdout"]
                    samples[method].append(run)
            for path in (out, reference, *copies):
                path.unlink(missing_ok=True)
            rows[target] = {"source": str(src), "source_bytes": src.stat().st_size, "runs": samples,
                            **{f"{m}_seconds": median(s, "seconds") for m, s in samples.items()},
                            **{f"{m}_rss": median(s, "rss") for m, s in samples.items()}}
            print(f"  convert {variant} --to {target}: cp source + output {rows[target]['moved_seconds']:.2f} s, parity "
                  f"{rows[target]['parity_seconds']:.2f} s, naive {rows[target]['naive_seconds']:.2f} s", flush=True)
        pdparams.unlink(missing_ok=True)
        result["variants"][variant] = rows
    return result


# ---------------------------------------------------------------- 2. forward
def bench_forward(variants, runs: int, batches, env: dict) -> dict:
    result = {}
    for variant in variants:
        sides = {}
        for framework in ("torch", "paddle"):
            out = measure([PYTHON, str(ROOT / "benchmarks" / "forward.py"), framework, variant, "--runs", str(runs),
                           "--batches", *map(str, batches)], env)
            sides[framework] = json.loads(out["stdout"].strip().splitlines()[-1])
        rows = {}
        for tower in ("image", "text"):
            for batch in map(str, batches):
                t, p = (statistics.median(sides[f][tower][batch]) for f in ("torch", "paddle"))
                rows[f"{tower} x{batch}"] = {"torch_seconds": t, "paddle_seconds": p, "ratio": p / t,
                                             "torch_runs": sides["torch"][tower][batch],
                                             "paddle_runs": sides["paddle"][tower][batch]}
        rows["loaded"] = {f: sides[f].get("loaded") for f in sides}  # what each process imported
        result[variant] = rows
        print(f"  forward {variant}: " + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in rows.items() if k != "loaded"),
              flush=True)
    return result


# ---------------------------------------------------------------- 5. exports
def bench_export(variants, runs: int, batches, work: Path, env: dict) -> dict:
    """Per variant: `parity export` to each runtime (its wall time, the check included), then the forward
    time of torch eager, Paddle dygraph and each export in its runtime, in processes of their own, on the
    same weights and inputs."""
    result = {}
    for variant in variants:
        archive = release_archive(variant)
        folders, exports, sides = {}, {}, {}
        for fmt in RUNTIMES:
            folders[fmt] = work / f"export-{fmt}"
            shutil.rmtree(folders[fmt], ignore_errors=True)
            run = measure([PARITY, "export", str(archive), "--to", fmt, "-o", str(folders[fmt])], env)
            exports[fmt] = {"seconds": run["seconds"], "rss": run["rss"], "summary": run["stdout"].strip()}
        for framework in ("torch", "paddle", *RUNTIMES):
            extra = ["--export", str(folders[framework])] if framework in folders else []
            out = measure([PYTHON, str(ROOT / "benchmarks" / "forward.py"), framework, variant, "--runs", str(runs),
                           "--batches", *map(str, batches), *extra], env)
            sides[framework] = json.loads(out["stdout"].strip().splitlines()[-1])
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        rows = {}
        for tower in ("image", "text"):
            for batch in map(str, batches):
                seconds = {f: statistics.median(sides[f][tower][batch]) for f in sides}
                rows[f"{tower} x{batch}"] = {"seconds": seconds, "runs": {f: sides[f][tower][batch] for f in sides},
                                             **{f"{f}_vs_torch": seconds[f] / seconds["torch"] for f in sides if f != "torch"}}
        result[variant] = {"export": exports, "forward": rows}
        print(f"  export {variant}: " + ", ".join(f"{k} predictor {v['paddle-inference_vs_torch']:.2f} onnxruntime "
                                                   f"{v['onnx_vs_torch']:.2f}" for k, v in rows.items()), flush=True)
    return result


# ---------------------------------------------------------------- 3. verify-all
def bench_verify_all(runs: int, names, work: Path, env: dict) -> dict:
    samples = []
    for _ in range(runs):
        folder = work / "verify-all"
        cmd = [PARITY, "verify-all", "--report-dir", str(folder), "--weights-dir", str(work / "no-weights")]
        for name in names:
            cmd += ["--variant", name]
        run = measure(cmd, env)
        report = json.loads((folder / "verify-all.json").read_text())
        samples.append({"seconds": run["seconds"], "rss": run["rss"], "passed": report["passed"],
                        "per_variant": {r["variant"]: r["seconds"] for r in report["results"]}})
        shutil.rmtree(folder, ignore_errors=True)
        print(f"  verify-all: {run['seconds']:.1f} s, peak RSS {run['rss'] / 2**30:.2f} GiB", flush=True)
    return {"runs": samples, "seconds": median(samples, "seconds"), "rss": median(samples, "rss"),
            "variants": list(names) or "all nine"}


# ---------------------------------------------------------------- 4. ViT-bigG-14
def _big_convert(source: Path, model: str, folder: Path, runs: int, env: dict) -> dict:
    """`parity convert --to paddle` against `cp` of the source plus `cp` of the output (a reference output
    parity made first), interleaved, medians. Each command starts just after the last one's 10 GB output
    was deleted: on a VM that hands freed memory back to its host, writing into memory the guest has not
    touched lately costs several times writing into memory just freed, so a command run after the others
    had filled the page cache would be measured on other terms (see reports/measurements.md)."""
    reference, out, copy = folder / "reference.pdparams", folder / "out.pdparams", folder / "copy"
    convert = [PARITY, "convert", str(source), "--to", "paddle", "--config", model, "-o"]
    measure(convert + [str(reference)], env)
    samples: dict[str, list] = {"moved": [], "parity": []}
    for _ in range(runs):  # one copy on disk at a time: the disk holds the source, the reference and one more
        moved = 0.0
        for original in (source, reference):
            moved += measure(["cp", str(original), str(copy)], env)["seconds"]
            copy.unlink()
        samples["moved"].append({"seconds": moved})
        run = measure(convert + [str(out)], env)
        run["output_bytes"] = out.stat().st_size
        out.unlink()
        del run["stdout"]
        samples["parity"].append(run)
    reference.unlink()
    return {"moved_seconds": median(samples["moved"], "seconds"), "seconds": median(samples["parity"], "seconds"),
            "rss": median(samples["parity"], "rss"), "output_bytes": samples["parity"][-1]["output_bytes"],
            "runs": samples}


def bench_big(work: Path, env: dict, model: str = BIG, runs: int = 3) -> dict:
    """A synthetic open_clip ViT-bigG-14 (float32, 9.46 GiB) as open_clip_model.safetensors: `parity
    verify` (both towers, then the text tower alone) and `parity convert --to paddle` against cp."""
    folder = work / "big"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "open_clip_model.safetensors"
    made = measure([PYTHON, "-c", f"from parity.testing.synthetic import write_safetensors; write_safetensors({model!r}, "
                                  f"{str(source)!r})"], env)
    result = {"model": model, "source_bytes": source.stat().st_size, "write_seconds": made["seconds"]}
    print(f"  wrote {source.name}: {_gib(result['source_bytes'])} in {made['seconds']:.0f} s", flush=True)
    try:
        for tower in ("both", "text"):
            run = measure([PARITY, "verify", str(source), "--config", model, "--tower", tower, "--device", "cpu",
                           "--report-dir", str(folder / "reports"), "--json"], env)
            report = json.loads(run["stdout"])
            result[f"verify_{tower}"] = {"seconds": run["seconds"], "rss": run["rss"], "passed": report["passed"],
                                         "differences": {k: v["max_abs"] for k, v in report["differences"].items()},
                                         "bounds": {k: v["bound"] for k, v in report["differences"].items()}}
            print(f"  verify --tower {tower}: {run['seconds']:.0f} s, peak RSS {_gib(run['rss'])}, passed "
                  f"{report['passed']}", flush=True)
        result["convert"] = _big_convert(source, model, folder, runs, env)
        c = result["convert"]
        print(f"  convert --to paddle: {c['seconds']:.0f} s (cp of source and output {c['moved_seconds']:.0f} s), "
              f"peak RSS {_gib(c['rss'])}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # 20 GB of temporary files
    return result


# ---------------------------------------------------------------- report
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# Why a target is missed, from profiling on this 2-core machine (cProfile for conversion, Paddle's profiler
# for the forward); printed beside a missed target only.
WHY = {
    "convert_vs_moved": "cp moves bytes inside the kernel (copy_file_range); parity parses the archive, reads each "
                        "fp16 tensor, casts it to float32 (numpy's cast, 2 ns a value: 0.29 s for ViT-B/32, made a tensor "
                        "ahead on a second thread), writes 1.7x the source's bytes, digests each tensor (XXH3-128), hashes "
                        "the source (SHA-256, on the other core) and reads the whole output back through its restricted "
                        "unpickler (hashing each array where it lies); the interpreter, numpy and parity's imports take "
                        "0.2 s. In-process timeline, ViT-B/32: parse 0.1 s, make 0.38 s (worker; the main thread waits "
                        "0.3 s of it), write 0.58 s, check 0.08 s; two cores busy: 1.15 s user + 0.45 s sys in 1.1 s",
    "big_convert_vs_moved": "a float32 file needs no cast: what is left is the SHA-256 pass beside, the digests, and "
                            "reading back 9.46 GiB of output, hashed where it lies",
    "naive_vs_convert": "both are bound by the same casts and writes",
    "rss_vs_size": "a .pdparams source is a pickle: it is read whole (1x the source), where zip archives and "
                   "safetensors are memory-mapped and read one tensor at a time",
    "paddle_vs_torch": "Paddle's GEMMs (its bundled MKL) run 5-20% slower than torch's at these shapes, and q, k, v "
                       "are three GEMMs where torch's MultiheadAttention runs one fused in_proj: in a text tower addmm is "
                       "73% of Paddle's time. In ResNet image towers conv2d (im2col + GEMM) is 71% of Paddle's time, "
                       "against torch's oneDNN convolutions. See the noise check under the forward table for how far one "
                       "cell moves from run to run",
    "verify_all_seconds": "verify-all runs every variant's forward in both frameworks on the canonical pair and eight "
                          "photographs (the photographs are 70% of its time), plus a float64 torch run for the noise "
                          "floor where none is kept: its time follows the forward speed and the host's",
    "big_verify_rss": "peak RSS over the target: see the big-model section for where it goes",
    "exported_vs_torch:paddle-inference": "the predictor runs Paddle's own GEMM kernels, those that leave Paddle's "
                                          "dygraph 5-20% behind torch at these shapes (see the forward target): its IR "
                                          "passes remove the dynamic graph's per-operator cost, not that gap. oneDNN, "
                                          "whose kernels win RN50's image tower (0.63x torch), makes text towers about "
                                          "15x slower, so it is off there; ViT image towers gain nothing from it. One "
                                          "cell moves by up to 0.3 from run to run on this host (section 2's noise check)",
    "exported_vs_torch:onnx": "onnxruntime's CPU kernels against torch's: see section 5 for the cell",
}


def _verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    met = value <= target if lower_is_better else value >= target
    if met:
        return "met"
    return f"missed by {value / target:.2f}x" if lower_is_better else f"missed by {target / value:.2f}x"


def markdown(data: dict) -> str:
    m = data["machine"]
    md = ["# make bench", "",
          f"{m['date']}; {m['cpu']}, {m['cores']} cores, {_gib(m['memory_bytes'])}; Python {m['python']}, "
          f"parity {m['parity']}, torch {m['torch']}, paddle {m['paddle']}, numpy {m['numpy']}; "
          f"OMP_NUM_THREADS={m['threads']}. Every figure is the median of {data['runs']} runs; every ratio "
          "is taken within this run. Files are read from the page cache (warm), as on a second conversion.", ""]
    if data.get("kept"):
        md += ["Sections kept from earlier runs (`--keep`): " + ", ".join(
            f"{section.replace('_', '-')} (measured {date})" for section, date in data["kept"].items()) + ".", ""]
    conv = data.get("conversion")
    if conv:
        md += ["## 1. Conversion (whole process, synthetic release-format archives)", "",
               f"Idle baseline (`parity --version`): peak RSS {_gib(conv['idle_rss'])}. RSS above idle is compared "
               "with the source file's size. Bytes moved: `cp` of the source plus `cp` of the output (the limit for "
               "a tool that reads one and writes the other).", "",
               "| variant | target | source | bytes moved | parity | naive | parity / bytes moved | naive / parity | "
               "parity RSS above idle (× source) | naive RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, rows in conv["variants"].items():
            for target, r in rows.items():
                above = r["parity_rss"] - conv["idle_rss"]
                md.append(f"| {variant} | {target} | {_gib(r['source_bytes'])} | {r['moved_seconds']:.2f} s | "
                          f"{r['parity_seconds']:.2f} s | {r['naive_seconds']:.2f} s | "
                          f"{r['parity_seconds'] / r['moved_seconds']:.1f}× | {r['naive_seconds'] / r['parity_seconds']:.1f}× | "
                          f"{_gib(above)} ({above / r['source_bytes']:.2f}×) | {_gib(r['naive_rss'])} |")
        md.append("")
    fwd = data.get("forward")
    if fwd:
        md += ["## 2. Forward: parity's Paddle CLIP vs the official PyTorch CLIP", "",
               "Each framework in a process of its own, free of the other (the Paddle process reads the weights with "
               "safetensors' numpy reader and never imports torch: `loaded` in bench.json), the same threads, weights "
               "and inputs; median seconds per call.", "",
               "| variant | tower × batch | torch | paddle | paddle / torch | target ≤ 1.2 |", "|---|---|---|---|---|---|"]
        for variant, rows in fwd.items():
            for key, r in ((k, r) for k, r in rows.items() if k != "loaded"):
                md.append(f"| {variant} | {key} | {r['torch_seconds'] * 1e3:.1f} ms | {r['paddle_seconds'] * 1e3:.1f} ms | "
                          f"{r['ratio']:.2f} | {_verdict(r['ratio'], TARGETS['paddle_vs_torch'])} |")
        md.append("")
        twins = [fwd.get(v, {}) for v in ("ViT-B/32", "ViT-B/16")]
        shared = [k for k in twins[0] if k.startswith("text") and k in twins[1]]
        if shared:  # the two variants' text towers are the same model: any difference is the host's noise
            md += ["Noise check: ViT-B/32 and ViT-B/16 have the same text tower (same shapes, same weights), so "
                   "their text ratios differ only by measurement noise: " + ", ".join(
                       f"{k} {twins[0][k]['ratio']:.2f} vs {twins[1][k]['ratio']:.2f}" for k in shared) + ".", ""]
    va = data.get("verify_all")
    if va:
        md += ["## 3. `make verify-all`", "", f"Variants: {va['variants']}; wall {va['seconds']:.1f} s, peak RSS "
               f"{_gib(va['rss'])}; every run passed: {all(r['passed'] for r in va['runs'])}.", ""]
    big = data.get("big")
    if big:
        md += [f"## 4. open_clip's {big['model']} (synthetic, float32, one file of {_gib(big['source_bytes'])})", "",
               "`parity verify` holds one tower of one framework at a time, each tensor read from the file as its "
               "tower is built, and measures the float64 noise floor one residual block at a time. One run of "
               "each verify (they take minutes); the conversion and `cp` interleaved, medians of "
               f"{len((big.get('convert') or {}).get('runs', {}).get('parity', [])) or 1}; peak RSS is the whole "
               "process's.", "",
               "| command | wall | peak RSS | result |", "|---|---|---|---|"]
        for tower in ("both", "text"):
            v = big.get(f"verify_{tower}")
            if v:
                md.append(f"| parity verify --tower {tower} | {v['seconds']:.0f} s | {_gib(v['rss'])} | "
                          f"{'PASS' if v['passed'] else 'FAIL'}: " + ", ".join(
                              f"{k} max Δ {d:.1e} (bound {v['bounds'][k]:.1e})" for k, d in v["differences"].items()) + " |")
        c = big.get("convert")
        if c:
            md.append(f"| parity convert --to paddle | {c['seconds']:.0f} s ({c['seconds'] / c['moved_seconds']:.1f}× the "
                      f"{c['moved_seconds']:.0f} s of cp of source and output) | {_gib(c['rss'])} "
                      f"({c['rss'] / big['source_bytes']:.2f}× source) | "
                      f"{_gib(c['output_bytes'])} written and checked |")
        md.append("")
    exp = data.get("export")
    if exp:
        md += ["## 5. Exported towers: Paddle Inference and onnxruntime beside torch eager and Paddle dygraph", "",
               "`parity export` to each runtime (wall time with its check), then each tower's forward in a process of "
               "its own, on the same weights and inputs; median seconds per call, and the ratio to torch eager.", ""]
        for variant, r in exp.items():
            md.append(f"{variant}: " + "; ".join(f"`parity export --to {fmt}` {e['seconds']:.0f} s, peak RSS "
                                                  f"{_gib(e['rss'])}" for fmt, e in r["export"].items()) + ".")
        md += ["", "| variant | tower × batch | torch | paddle dygraph | predictor | onnxruntime | dygraph / torch | "
               "predictor / torch | onnxruntime / torch |", "|---|---|---|---|---|---|---|---|---|"]
        for variant, r in exp.items():
            for key, row in r["forward"].items():
                t = row["seconds"]
                md.append(f"| {variant} | {key} | {t['torch'] * 1e3:.1f} ms | {t['paddle'] * 1e3:.1f} ms | "
                          f"{t['paddle-inference'] * 1e3:.1f} ms | {t['onnx'] * 1e3:.1f} ms | {row['paddle_vs_torch']:.2f} | "
                          f"{row['paddle-inference_vs_torch']:.2f} | {row['onnx_vs_torch']:.2f} |")
        md.append("")
    md += ["## Targets", "", "| target | measured | verdict | why (where missed) |", "|---|---|---|---|"]
    for line in data["targets"]:
        md.append(f"| {line['target']} | {line['measured']} | {line['verdict']} | {line.get('why', '')} |")
    return "\n".join(md) + "\n"


def targets(data: dict) -> list[dict]:
    lines = []
    conv = (data.get("conversion") or {}).get("variants", {})
    which = "ViT-B/32" if "ViT-B/32" in conv else next(iter(conv), None)
    if which:
        r = conv[which]["paddle"]
        lines.append({"kind": "convert_vs_moved", "target": f"parity convert {which} --to paddle ≤ 2.5× cp of source "
                      "+ output", "measured": f"{r['parity_seconds'] / r['moved_seconds']:.2f}×",
                      "verdict": _verdict(r["parity_seconds"] / r["moved_seconds"], TARGETS["convert_vs_moved"])})
        lines.append({"kind": "naive_vs_convert", "target": f"naive script ≥ 3× parity convert ({which} --to paddle)",
                      "measured": f"{r['naive_seconds'] / r['parity_seconds']:.2f}×",
                      "verdict": _verdict(r["naive_seconds"] / r["parity_seconds"], TARGETS["naive_vs_convert"], False)})
    for variant, rows in conv.items():
        for target, r in rows.items():
            ratio = (r["parity_rss"] - data["conversion"]["idle_rss"]) / r["source_bytes"]
            lines.append({"kind": "rss_vs_size", "target": f"peak RSS above idle ≤ 1.3× source ({variant} --to {target})",
                          "measured": f"{ratio:.2f}×", "verdict": _verdict(ratio, TARGETS["rss_vs_size"])})
    for variant, rows in (data.get("forward") or {}).items():
        rows = {k: r for k, r in rows.items() if k != "loaded"}
        worst_key = max(rows, key=lambda k: rows[k]["ratio"])
        ratio = rows[worst_key]["ratio"]
        lines.append({"kind": "paddle_vs_torch", "target": f"paddle / torch forward ≤ 1.2 ({variant}, worst: {worst_key})",
                      "measured": f"{ratio:.2f}", "verdict": _verdict(ratio, TARGETS["paddle_vs_torch"])})
    va = data.get("verify_all")
    if va:
        lines.append({"kind": "verify_all_seconds", "target": "make verify-all ≤ 5 min", "measured": f"{va['seconds']:.0f} s",
                      "verdict": _verdict(va["seconds"], TARGETS["verify_all_seconds"])})
    c = (data.get("big") or {}).get("convert")
    if c and "moved_seconds" in c:
        lines.append({"kind": "big_convert_vs_moved", "target": f"parity convert {data['big']['model']} --to paddle ≤ "
                      "1.5× cp of source + output", "measured": f"{c['seconds'] / c['moved_seconds']:.2f}×",
                      "verdict": _verdict(c["seconds"] / c["moved_seconds"], TARGETS["big_convert_vs_moved"])})
    big = (data.get("big") or {}).get("verify_both")
    if big:
        lines.append({"kind": "big_verify_rss", "target": f"parity verify {data['big']['model']}: peak RSS ≤ 20 GB",
                      "measured": f"{big['rss'] / 1e9:.1f} GB" + ("" if big["passed"] else " (the check FAILED)"),
                      "verdict": _verdict(big["rss"], TARGETS["big_verify_rss"]) if big["passed"] else "failed"})
    for variant, r in (data.get("export") or {}).items():
        for fmt, name in (("paddle-inference", "Paddle Inference predictor"), ("onnx", "onnxruntime")):
            worst = max(r["forward"], key=lambda k: r["forward"][k][f"{fmt}_vs_torch"])
            ratio = r["forward"][worst][f"{fmt}_vs_torch"]
            lines.append({"kind": f"exported_vs_torch:{fmt}",
                          "target": f"{name} / torch eager ≤ 1.2 ({variant}, worst: {worst})",
                          "measured": f"{ratio:.2f}", "verdict": _verdict(ratio, TARGETS["exported_vs_torch"])})
    for line in lines:
        line["why"] = "" if line["verdict"] == "met" else WHY[line.pop("kind")]
        line.pop("kind", None)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--verify-all-runs", type=int, default=1, help="runs of verify-all (about 6 min each)")
    parser.add_argument("--sections", nargs="+", default=["conversion", "forward", "verify-all", "big", "export"],
                        choices=["conversion", "forward", "verify-all", "big", "export"])
    parser.add_argument("--quick", action="store_true", help="ViT-B/32 / RN50 only, one run: a smoke test")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "reports")
    parser.add_argument("--keep", action="store_true",
                        help="keep the report's other sections (as measured before, dated) beside those measured now")
    parser.add_argument("--rewrite", action="store_true",
                        help="measure nothing: write bench.md again from the report dir's bench.json (verdicts too)")
    args = parser.parse_args()
    if args.rewrite:
        data = json.loads((args.report_dir / "bench.json").read_text())
        data["targets"] = targets(data)
        write_reports(data, args.report_dir)
        return

    runs = 1 if args.quick else args.runs
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
    work = ROOT / ".cache" / "bench"  # beside the cached checkpoints: the same disk
    work.mkdir(parents=True, exist_ok=True)
    data = {"machine": {**machine(), "threads": env["OMP_NUM_THREADS"]}, "runs": runs, "quick": args.quick}
    previous = args.report_dir / "bench.json"
    if args.keep and previous.exists():  # the sections not measured now stay as they were, with their date
        kept = json.loads(previous.read_text())
        data["kept"] = {}
        for section in ("conversion", "forward", "verify_all", "big", "export"):
            if section in kept and section.replace("_", "-") not in args.sections:
                data[section] = kept[section]
                data["kept"][section] = kept.get("kept", {}).get(section, kept["machine"]["date"])
    try:
        if "conversion" in args.sections:
            print("conversion", flush=True)
            data["conversion"] = bench_conversion(("ViT-B/32",) if args.quick else CONVERT_VARIANTS, runs, work, env)
        if "forward" in args.sections:
            print("forward", flush=True)
            data["forward"] = bench_forward(("RN50", "ViT-B/32") if args.quick else ALL_VARIANTS, runs,
                                            (1,) if args.quick else (1, 8), env)
        if "verify-all" in args.sections:
            print("verify-all", flush=True)
            data["verify_all"] = bench_verify_all(1 if args.quick else args.verify_all_runs,
                                                  ("RN50",) if args.quick else (), work, env)
        if "big" in args.sections:
            print(BIG if not args.quick else "ViT-B-32 (quick stand-in for ViT-bigG-14)", flush=True)
            data["big"] = bench_big(work, env, "ViT-B-32" if args.quick else BIG, runs)
        if "export" in args.sections:
            print("export", flush=True)
            data["export"] = bench_export(("ViT-B/32",) if args.quick else EXPORT_VARIANTS, runs,
                                          (1,) if args.quick else (1, 8), work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["targets"] = targets(data)
    write_reports(data, args.report_dir)


def write_reports(data: dict, folder: Path) -> None:
    from parity.io.formats.atomic import write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("bench.json", json.dumps(data, indent=1)), ("bench.md", markdown(data))):
        write_bytes(folder / name, text.encode())
    print(markdown(data))


if __name__ == "__main__":
    main()
