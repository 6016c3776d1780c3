"""The fuzzer in the test suite: a short fixed-seed pass over every reader (`make fuzz` runs minutes),
and every input the fuzzer ever failed on, replayed."""
import json
import re
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


# what each hostile seed's reader says of it, after its name (a regex)
SEED_REFUSALS = {
    "deep.pdparams": r"the pickle nests containers more than 100 deep, which no checkpoint does",
    "deep.pt": r"the pickle nests containers more than 100 deep, which no checkpoint does",
    "stride0.pt": r"a tensor of size \[268435456\] with strides \[0\] overlaps itself \(storage 0\): refused",
    "aliased.safetensors": r"tensor 't1' starts at 0 of the data where 65536 was expected: tensors overlap",
    "inf-shape.safetensors": r"tensor 'w' has a shape that is not a list of non-negative integers$",
    "deep-list.pdparams": r"containers nested more than 50 deep \(or one that holds itself\)$",
}


def test_the_hostile_seeds_are_refused_by_their_readers():
    """The seeds made from the red-team cases reach their readers and are refused there (not read), each
    refusal about the seed (its name as the error's path) and saying what is wrong with it."""
    import hostile_files as hostile
    from parity.io import formats
    from parity.errors import CheckpointError

    assert sorted(SEED_REFUSALS) == sorted(hostile.ALL)  # a new seed says here what its reader answers
    for name, make in hostile.ALL.items():
        with pytest.raises(CheckpointError, match=f"^{re.escape(name)}: {SEED_REFUSALS[name]}") as refusal:
            formats.read(formats.BytesSource(make(), name))
        assert refusal.value.path == name, (name, refusal.value.path)
