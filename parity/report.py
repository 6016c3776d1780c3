"""Reports: Markdown and JSON under reports/."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from . import __version__

COLUMNS = ("variant", "weights", "torch logit", "paddle logit", "|Δ logit|", "bound", "feature cosine",
           "max |Δ feature|", "status", "seconds")


def _row(r: dict) -> list[str]:
    feat = max(r["differences"]["image_features"]["max_abs"], r["differences"]["text_features"]["max_abs"])
    return [r["variant"], r["weights"], f"{r['torch_logit']:.6f}", f"{r['paddle_logit']:.6f}",
            f"{r['logit_delta']:.2e}", f"{r['logit_bound']:.1e} ({r['bound_kind']})", f"{r['feature_cosine']:.8f}",
            f"{feat:.2e}", "PASS" if r["passed"] else "FAIL", f"{r['seconds']:.1f}"]


def markdown_table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_verify_all(results: list[dict], report_dir: Path, total_seconds: float) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = {"parity": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "total_seconds": total_seconds, "passed": all(r["passed"] for r in results)}
    md = [f"# verify-all — {'PASS' if meta['passed'] else 'FAIL'}", "",
          f"parity {__version__}, {meta['date']}, {meta['machine']}; total {total_seconds:.1f} s.", "",
          "Canonical input: image = ones/2 (1, 3, R, R), text = ones (1, 77). Synthetic weights are "
          "deterministic random weights in the release's dtype mix, never official results. Bound = "
          "max(atol, 4 × float32 noise floor), noise floor measured with parity's torch model in float64.",
          "", markdown_table(results), ""]
    md_path, json_path = report_dir / "verify-all.md", report_dir / "verify-all.json"
    _atomic_write(md_path, "\n".join(md))
    _atomic_write(json_path, json.dumps({**meta, "results": results}, indent=2))
    return md_path, json_path
