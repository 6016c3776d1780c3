"""The fuzzer in the test suite: a short fixed-seed pass over every reader (`make fuzz` runs minutes),
and every input the fuzzer ever failed on, replayed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))
from targets import TARGETS, replay  # noqa: E402

REGRESSIONS = sorted(p for p in (ROOT / "tests" / "fuzz_regressions").glob("*/*") if p.is_file())


def test_a_short_fixed_seed_pass_over_every_reader(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", "60", "--runs", "3000",
                             "--seed", "1", "--no-report", "--work", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["target"] for r in results) == sorted(TARGETS)
    for r in results:  # each ran its inputs, with coverage feedback, and none failed
        assert r["executions"] >= 3000 and r["coverage"] > 50 and r["failures"] == [], r


def test_every_input_the_fuzzer_failed_on_is_now_refused_or_read():
    for path in REGRESSIONS:  # a ParityError is caught inside replay; anything else fails here
        replay(path.parent.name, path.read_bytes())


def test_the_hostile_seeds_are_refused_by_their_readers():
    """The seeds made from the red-team cases reach their readers and are refused there (not read)."""
    import hostile_files as hostile
    from parity.io import formats
    from parity.errors import ParityError

    for name, make in hostile.ALL.items():
        with pytest.raises(ParityError):
            formats.read(formats.BytesSource(make(), name))
