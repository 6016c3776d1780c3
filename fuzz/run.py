"""`make fuzz`: every reader under atheris for a while, two at a time, and reports/fuzz.md.

    python fuzz/run.py                       # each target 300 s (two at a time on two cores)
    python fuzz/run.py --seconds 20 --seed 1 --runs 3000 --no-report     # what `make test` runs

Corpora live under .cache/fuzz/<target> (seeded from fuzz/seeds.py, kept between runs). A failure (an
exception other than ParityError, a crash, a hang over 10 s, RSS over 1 GiB) is kept under
tests/fuzz_regressions/<target>/, where the test suite replays it, and the run exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from targets import TARGETS  # noqa: E402

REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
TIMEOUT_S, RSS_LIMIT_MB, MAX_LEN = 10, 1024, 1 << 16
_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")


def fuzz(target: str, corpus: Path, seeds: Path, seconds: int, seed: int | None, runs: int | None,
         artifacts: Path) -> dict:
    """One target under libFuzzer; its counts, and the failing input if there was one."""
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    flags = [f"-max_total_time={seconds}", f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
             f"-max_len={MAX_LEN}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
             f"-dict={HERE / 'dicts' / (target + '.dict')}"]
    if seed is not None:
        flags.append(f"-seed={seed}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "targets.py"), target, str(corpus), str(seeds), *flags],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    done = _DONE.findall(log)
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    failures = sorted(p for p in artifacts.iterdir() if p.is_file())
    result = {"target": target, "seconds": round(wall, 1), "status": proc.returncode,
              "executions": int(stats.get("number_of_executed_units", done[-1][0] if done else 0)),
              "coverage": int(done[-1][1]) if done else None, "features": int(done[-1][2]) if done else None,
              "corpus": len(list(corpus.iterdir())), "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
              "failures": [p.name for p in failures]}
    if proc.returncode != 0 or failures:
        keep = REGRESSIONS / target
        keep.mkdir(parents=True, exist_ok=True)
        for p in failures:
            shutil.copy(p, keep / p.name)
        result["log_tail"] = log[-4000:]
    return result


def report(results: list[dict], seconds: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = ["# Fuzzing the readers (`make fuzz`)", "",
             f"Measured {now} on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"atheris (libFuzzer), {seconds} s per target, two targets at a time. Each input goes through the "
             "reader, every tensor is read, and the checkpoint is built from it; a ParityError is the only "
             f"admitted outcome besides success. Failure: any other exception, a crash, a hang over {TIMEOUT_S} s, "
             f"RSS over {RSS_LIMIT_MB} MiB, or tensors larger than twice the input. Inputs up to {MAX_LEN} bytes.",
             "", "| reader | seconds | executions | exec/s | coverage (edges) | features | corpus | peak RSS | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["executions"] / r["seconds"] if r["seconds"] else 0
        lines.append(f"| {r['target']} | {r['seconds']:.0f} | {r['executions']:,} | {rate:,.0f} | {r['coverage']} | "
                     f"{r['features']} | {r['corpus']} | {r['peak_rss_mb']} MiB | "
                     f"{', '.join(r['failures']) or 'none'} |")
    lines += ["", "Corpora start from fuzz/seeds.py: files written by parity, torch.save, torch.jit, paddle.save, "
              "pickle and the safetensors library, and the hostile files of tests/test_red_team.py. Each reader "
              "has a dictionary of its format's tokens (fuzz/dicts/). The zip readers mutate an entry's bytes "
              "(mostly data.pkl), duplicate, drop or rename entries and rebuild a valid archive around them, and "
              "the safetensors reader mutates its JSON header with the length made right, so inputs get past "
              "the container checks; a quarter of the mutations stay plain byte mutations. Failing inputs are "
              "kept under tests/fuzz_regressions/ and replayed by the test suite.", ""]
    from parity.io.formats.atomic import write_bytes

    path = folder / "fuzz.md"
    write_bytes(path, "\n".join(lines).encode())
    write_bytes(folder / "fuzz.json", json.dumps({"date": now, "seconds": seconds, "results": results}, indent=1).encode())
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=None, help="stop each target after this many inputs")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "fuzz")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "reports")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    seeds = args.work / "seeds"
    if not seeds.is_dir():
        subprocess.run([sys.executable, str(HERE / "seeds.py"), str(seeds)], check=True, cwd=ROOT)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: fuzz(t, args.work / "corpus" / t, seeds / t, args.seconds, args.seed,
                                               args.runs, args.work / "artifacts" / t), args.targets))
    for r in results:
        print(f"{r['target']:12} {r['executions']:>9,} runs in {r['seconds']:5.0f} s, coverage {r['coverage']}, "
              f"corpus {r['corpus']}, peak RSS {r['peak_rss_mb']} MiB, failures: {', '.join(r['failures']) or 'none'}")
        if "log_tail" in r:
            print(r["log_tail"])
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    if not args.no_report:
        print(f"wrote {report(results, args.seconds, args.report_dir)}")
    return 0 if all(r["status"] == 0 and not r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
