"""The red-team pass, case by case (the hardening issue's numbering): each hostile file or fault gets one
line naming the file and exit 2 (or the signal's status), nothing left in the output folder, the input
unchanged, nothing outside the output folder touched, and memory bounded by the file, not its claims.

Commands that could crash or hog memory run in a process of their own, as a user runs them.
"""
from __future__ import annotations

import os
import pty
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hostile_files as hostile
from helpers import MB, PARITY, digest, listing, one_line, refused, run, spawn
from parity.io.formats import atomic, temps


def _saved(folder: Path, name: str, vocab: int) -> Path:
    """A tiny CLIP saved by torch.save, with its config beside it as NAME.json (a torch.save file carries none)."""
    import json

    import torch
    torch.save(hostile.tiny_state(vocab), folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps(hostile.tiny_config(vocab).to_dict()))
    return folder / f"{name}.pt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small computable CLIP (6 MB: the full CLIP vocabulary, in float16); its config in tiny.json."""
    return _saved(tmp_path_factory.mktemp("tiny"), "tiny", 49408)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> Path:
    """A tiny CLIP whose vocabulary (1000) is smaller than the tokenizer's ids (600 kB); config in small.json."""
    return _saved(tmp_path_factory.mktemp("small"), "small", 1000)


def hostile_file(folder: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = folder / name
    path.write_bytes(data)
    return path, digest(path)


# ---------------------------------------------------------------- 1. duplicate zip entries
def test_1_duplicate_storage_entry_is_refused(tmp_path, small_vocab):
    src, before = hostile_file(tmp_path, "dup.pt", hostile.duplicate_entry(small_vocab.read_bytes(),
                                                                           "token_embedding.weight"))
    out = tmp_path / "out"
    out.mkdir()
    refused(run("convert", src, "--to", "paddle", "-o", out / "dup.pdparams"), src, "2 entries named",
            "ambiguous")
    refused(run("info", src), src, "2 entries named")
    assert listing(out) == [] and digest(src) == before


# ---------------------------------------------------------------- 2. every path that reads a tensor checks it
@pytest.mark.parametrize("command", ["verify", "logits", "convert", "info"])
def test_2_entry_longer_than_its_storage_is_refused_everywhere(tmp_path, tiny, command):
    src, before = hostile_file(tmp_path, "longer.pt", hostile.longer_entry(tiny.read_bytes(),
                                                                           "token_embedding.weight"))
    config = ["--config", tiny.with_suffix(".json")]
    args = {"verify": ["verify", src, "--report-dir", tmp_path / "reports", *config],
            "logits": ["logits", src, "--framework", "torch", *config],
            "convert": ["convert", src, "--to", "paddle"], "info": ["info", src]}[command]
    refused(run(*args), src, "storage", "corrupt")
    assert listing(tmp_path) == ["longer.pt"] and digest(src) == before


def test_2_crc_of_a_tensor_entry_is_checked_by_verify_and_logits(tmp_path, tiny):
    import zipfile
    data = bytearray(tiny.read_bytes())
    with zipfile.ZipFile(tiny) as z:
        entry = z.getinfo(hostile.storage_of(bytes(data), "token_embedding.weight"))
    header = entry.header_offset
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") + \
        int.from_bytes(data[header + 28:header + 30], "little")
    data[start + 100] ^= 0x40  # one flipped bit in the embedding, its CRC-32 as it was
    src, _ = hostile_file(tmp_path, "flipped.pt", bytes(data))
    config = ["--config", tiny.with_suffix(".json")]
    refused(run("logits", src, "--framework", "paddle", *config), src, "CRC-32")
    refused(run("verify", src, "--report-dir", tmp_path / "reports", *config), src, "CRC-32")


# ---------------------------------------------------------------- 3. symlinks at every name parity creates
@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"  # outside the output folder
    path.write_bytes(b"precious")
    path.chmod(0o600)
    return path


def assert_untouched(victim: Path):
    assert victim.read_bytes() == b"precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600


@pytest.mark.parametrize("named", [False, True], ids=["unnamed-tmpfile", "named-fallback"])
def test_3_symlinks_planted_at_every_name_are_never_followed(tmp_path, small_vocab, victim, monkeypatch, named):
    out = tmp_path / "out"
    out.mkdir()
    names = [f".parity-{os.getpid()}-{i:012x}.tmp" for i in range(16)]
    for name in names[:3]:  # the first names parity will pick, taken by symlinks to the victim
        os.symlink(victim, out / name)
    picked = iter(names)
    monkeypatch.setattr(temps, "temp_name", lambda: next(picked))
    monkeypatch.setattr(atomic, "NAMED", named)
    target = out / "x.pdparams"
    os.symlink(victim, target)  # and the output's own name
    refused(run("convert", small_vocab, "--to", "paddle", "-o", target), target, "already exists", "--force")
    assert_untouched(victim)
    result = run("convert", small_vocab, "--to", "paddle", "-o", target, "--force")
    assert result.exit_code == 0, result.output
    assert_untouched(victim)
    assert target.is_file() and not target.is_symlink() and target.stat().st_size > 100_000
    assert listing(out) == sorted(names[:3] + ["x.pdparams"])  # nothing of parity's left beside it
    assert all((out / n).is_symlink() for n in names[:3])


RACER = """import os, sys, time
folder, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    for entry in os.scandir(folder):
        if not entry.is_symlink():
            try:
                os.unlink(entry.path)
                os.symlink(victim, entry.path)
            except OSError:
                pass
"""


@pytest.mark.parametrize("named", [False, True], ids=["unnamed-tmpfile", "named-fallback"])
def test_3_a_racing_process_that_swaps_names_for_symlinks_touches_nothing_outside(tmp_path, small_vocab, victim,
                                                                                 monkeypatch, named):
    """Another process with write access to the output folder replaces every file that appears in it with a
    symlink to a file outside it, as fast as it can (the red team's race, with no knowledge of the names
    parity uses): the victim is never written and its mode never changes, whatever happens to the names."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(atomic, "NAMED", named)
    racer = subprocess.Popen([sys.executable, "-c", RACER, str(out), str(victim), "60"])
    try:
        time.sleep(0.2)
        results = [run("convert", small_vocab, "--to", "paddle", "-o", out / f"x{i}.pdparams", "--force")
                   for i in range(30)]
    finally:
        racer.kill()
        racer.wait()
    assert_untouched(victim)
    for result in results:  # parity finished, or said in one line what went wrong
        assert result.exit_code == 0 or (result.exit_code == 2 and one_line(result.output)), result.output


# ---------------------------------------------------------------- 4. deep nesting
@pytest.mark.parametrize("kind", ["pdparams", "pt"])
def test_4_deeply_nested_pickle_is_refused_not_a_crash(tmp_path, kind):
    data = hostile.deep_pickle() if kind == "pdparams" else hostile.deep_pt()
    src, before = hostile_file(tmp_path, f"deep.{kind}", data)
    for args in (["info", src], ["convert", src, "--to", "torch" if kind == "pdparams" else "paddle"]):
        status, _, err, _ = spawn(*args)
        assert status == 2, (status, err)
        one_line(err, str(src), "nests containers more than 100 deep")
    assert listing(tmp_path) == [src.name] and digest(src) == before
    status, _, err, _ = spawn("info", src, "--debug")  # a traceback, not a dead process
    assert status == 1 and "nests containers" in err


def test_4_lists_deepened_after_they_were_stored_are_refused(tmp_path):
    src, _ = hostile_file(tmp_path, "deep-list.pdparams", hostile.deep_list_pickle(5000))
    refused(run("info", src), src, "nested more than 50 deep")


# ---------------------------------------------------------------- 5. memory set by the file's size, not its claims
@pytest.fixture(scope="module")
def baseline(tiny, tmp_path_factory):
    """Peak RSS of verify and logits on a tiny valid file: the bound for a hostile one is 200 MB above it."""
    reports = tmp_path_factory.mktemp("reports")
    rss = {}
    config = ["--config", tiny.with_suffix(".json")]
    status, out, err, rss["verify"] = spawn("verify", tiny, "--report-dir", reports, *config)
    assert status == 0, err
    status, out, err, rss["logits"] = spawn("logits", tiny, "--framework", "paddle", *config)
    assert status == 0, err
    return rss


MEMORY_CASES = {
    "stride0.pt": (hostile.stride_zero, "overlaps itself"),
    "inflating-storage.pt": (lambda: hostile.inflating("storage", 1 << 28), "compressed"),
    "inflating-byteorder.pt": (lambda: hostile.inflating("byteorder", 1 << 28), "byteorder"),
    "aliased.safetensors": (lambda: hostile.aliased_safetensors(512, 3 << 19), "overlap"),
}


@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_5_memory_follows_the_file_not_its_claims(tmp_path, name, baseline):
    make, needle = MEMORY_CASES[name]
    src, before = hostile_file(tmp_path, name, make())
    assert src.stat().st_size < 2 * MB
    out = tmp_path / "out"
    out.mkdir()
    commands = {"info": ["info", src], "convert": ["convert", src, "--to", "torch", "-o", out / "x.pt"],
                "verify": ["verify", src, "--report-dir", out], "logits": ["logits", src, "--framework", "torch"]}
    for command, args in commands.items():
        status, _, err, rss = spawn(*args)
        assert status == 2, (command, status, err)
        one_line(err, str(src), needle)
        bound = 200 * MB if command in ("info", "convert") else baseline[command] + 200 * MB
        assert rss < bound, (command, rss / MB, bound / MB)
    assert listing(out) == [] and digest(src) == before


# ---------------------------------------------------------------- 6. signals and faults during convert
@pytest.fixture(scope="module")
def big_source():
    from parity.testing.synthetic import release_archive
    return release_archive("ViT-B/32")  # 350 MB: its conversion takes seconds


def _writing(proc: subprocess.Popen, folder: Path, timeout: float = 60.0) -> None:
    """Wait until `proc` holds a file open in `folder` (its output, unnamed or not): writing has begun."""
    fds = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            targets = [os.readlink(fds / fd) for fd in os.listdir(fds)]
        except OSError:
            targets = []
        if any(t.startswith(str(folder) + "/") for t in targets):
            return
        time.sleep(0.01)
    raise AssertionError("the conversion never started writing")


def _interruptible():
    # as a terminal starts a command: SIGINT at its default. A suite run as a background job inherits
    # SIGINT ignored (POSIX), and a Python started so keeps ignoring it, as nohup'd programs should
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _convert(source: Path, out: Path, env=None, prefix=()):
    return subprocess.Popen([*prefix, PARITY, "convert", str(source), "--to", "paddle", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_interruptible)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("named", [False, True], ids=["unnamed-tmpfile", "named-fallback"])
def test_6_signals_during_convert_leave_nothing(tmp_path, big_source, sig, named):
    out = tmp_path / "out"
    out.mkdir()
    proc = _convert(big_source, out / "x.pdparams", {"PARITY_TMPFILE": "named"} if named else {})
    _writing(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    one_line(err, f"stopped by {sig.name}")
    assert listing(out) == []


def test_6_timeout_leaves_nothing(tmp_path, big_source):
    out = tmp_path / "out"
    out.mkdir()
    proc = _convert(big_source, out / "x.pdparams", prefix=("timeout", "-s", "TERM", "1"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 124, err
    assert listing(out) == []


@pytest.mark.parametrize("named", [False, True], ids=["unnamed-tmpfile", "named-fallback"])
def test_6_after_sigkill_nothing_is_left_or_the_next_run_removes_it(tmp_path, big_source, small_vocab, named):
    out = tmp_path / "out"
    out.mkdir()
    env = {"PARITY_TMPFILE": "named"} if named else {}
    proc = _convert(big_source, out / "x.pdparams", env)
    _writing(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    left = listing(out)
    if not named:
        assert left == []  # an unnamed file dies with its process
        return
    assert len(left) == 1 and temps.TEMP.fullmatch(left[0]), left  # a SIGKILL cannot be caught
    status, _, err, _ = spawn("convert", small_vocab, "--to", "paddle", "-o", out / "y.pdparams", env=env)
    assert status == 0, err
    assert listing(out) == ["y.pdparams"]  # the next run to this folder removed the dead run's file


def test_6_input_truncated_while_read_is_one_line_and_nothing_left(tmp_path, big_source):
    src = tmp_path / "src.pt"
    shutil.copyfile(big_source, src)
    out = tmp_path / "out"
    out.mkdir()
    proc = _convert(src, out / "x.pdparams")
    _writing(proc, out)
    os.truncate(src, src.stat().st_size // 2)  # another process cuts the input short
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    line = one_line(err, str(src))
    assert "truncated while parity read it" in line or "changed while parity read it" in line, line
    assert listing(out) == []


# ---------------------------------------------------------------- 7. tracebacks where one line is promised
def test_7_a_name_that_is_not_utf8(tmp_path, small_vocab):
    folder = os.fsencode(tmp_path)
    src = folder + b"/clip\xff.pt"
    shutil.copyfile(small_vocab, src)
    env = {"LC_ALL": "C.UTF-8"}
    status, out, err, _ = spawn("convert", os.fsdecode(src), "--to", "paddle", env=env)
    assert status == 0, err
    assert "clip\\xff.pdparams" in out and os.path.exists(folder + b"/clip\xff.pdparams")
    status, _, err, _ = spawn("convert", os.fsdecode(src), "--to", "paddle", env=env)  # it exists now
    assert status == 2
    one_line(err, "clip\\xff.pdparams", "already exists")


def test_7_a_name_too_long_on_a_terminal(tmp_path):
    name = tmp_path / ("x" * 300 + ".pt")
    primary, secondary = pty.openpty()  # stderr a terminal: the progress bar asks for the file's size
    try:
        status, _, _, _ = spawn("convert", name, "--to", "paddle", stderr=secondary)
        os.close(secondary)
        err = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(primary)
    assert status == 2
    one_line(err.decode(), "xxxx", "name too long")


def test_7_a_vocabulary_smaller_than_the_tokenizer_is_named(tmp_path, small_vocab):
    refused(run("verify", small_vocab, "--report-dir", tmp_path / "r", "--config", small_vocab.with_suffix(".json")),
            small_vocab, "1000 rows", "49407")
    assert not (tmp_path / "r").exists()


def test_7_an_infinite_safetensors_shape_names_the_file(tmp_path):
    src, _ = hostile_file(tmp_path, "inf.safetensors", hostile.infinite_shape())
    refused(run("info", src), src, "shape")
    refused(run("convert", src, "--to", "paddle"), src, "shape")


# ---------------------------------------------------------------- 8. untrusted names are printed escaped
def test_8_terminal_escapes_in_names_are_printed_escaped(tmp_path, small_vocab):
    import torch
    src, _ = hostile_file(tmp_path, "esc.pt", hostile.escape_key(small_vocab.read_bytes()))
    for result in (run("info", src), run("convert", src, "--to", "paddle")):
        refused(result, src, "\\x1b]0;OWNED\\x07\\x1b[2J")
        assert "\x1b" not in result.output and "\x07" not in result.output
    # an escape in a key beside the state dict, which info reports
    state = torch.load(small_vocab, weights_only=True)
    torch.save({"state_dict": state, hostile.ESCAPES: 1}, tmp_path / "beside.pt")
    result = run("info", tmp_path / "beside.pt")
    assert result.exit_code == 0 and "\\x1b]0;OWNED" in result.output and "\x1b" not in result.output
    name = tmp_path / f"name{hostile.ESCAPES}.pt"
    shutil.copyfile(small_vocab, name)
    result = run("convert", name, "--to", "paddle")
    assert result.exit_code == 0 and "\x1b" not in result.output and "name\\x1b]0;OWNED" in result.output


# ---------------------------------------------------------------- 9. minor
def test_9_a_legal_255_character_output_name(tmp_path, small_vocab):
    out = tmp_path / ("o" * (255 - len(".pdparams")) + ".pdparams")
    assert len(out.name) == 255
    result = run("convert", small_vocab, "--to", "paddle", "-o", out)
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == [out.name]


def test_9_a_duplicate_data_pkl_is_named_as_such(tmp_path, small_vocab):
    src, _ = hostile_file(tmp_path, "twice.pt", hostile.two_data_pkl(small_vocab.read_bytes()))
    refused(run("info", src), src, "2 entries named 'small/data.pkl'")
