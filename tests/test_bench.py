"""`make bench` stays runnable: its quick mode on ViT-B/32's conversion writes both reports with every ratio.
(The figures themselves are measured by `make bench`, never asserted by a timed test.)"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_conversion_writes_both_reports(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--sections", "conversion",
                    "--report-dir", str(tmp_path)], check=True, capture_output=True, timeout=900)
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["conversion"]["variants"]["ViT-B/32"]
    assert set(rows) == {"paddle", "torch", "safetensors"}
    for row in rows.values():
        assert row["moved_seconds"] > 0 and row["parity_seconds"] > 0 and row["naive_seconds"] > 0
        assert row["parity_rss"] > data["conversion"]["idle_rss"] > 0
        # every method wrote its output: parity's and the naive script's hold the same tensors
        assert row["runs"]["parity"][0]["output_bytes"] > 0 and row["runs"]["naive"][0]["output_bytes"] > 0
        # the limit moves what parity moves: its copy of the output is parity's output, byte count for byte count
        assert row["runs"]["moved"][0]["output_bytes"] == row["runs"]["parity"][0]["output_bytes"]
    md = (tmp_path / "bench.md").read_text()
    assert "| ViT-B/32 | paddle |" in md and "parity / bytes moved" in md and "peak RSS above idle" in md
    assert data["machine"]["cores"] and data["machine"]["torch"] and data["machine"]["paddle"]
