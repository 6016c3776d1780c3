"""The folder output (`atomic_folder`): written through one descriptor of a staging folder that parity made,
named with renameat2, and never redirected by a process that renames entries in the output's parent; and a
`FileSource` whose opening failed leaves nothing for its finalizer to trip over.

The attacker is simulated deterministically: the test itself swaps the staging folder for a symlink to a
folder of its own at the moment the red team's racing process would.
"""
from __future__ import annotations

import errno
import gc
import os
import signal
import threading
from pathlib import Path

import pytest

from parity.errors import CheckpointError, OutputExistsError
from parity.io.formats import atomic, renameat2, temps
from parity.io.formats.source import FileSource

MODES = [pytest.param(False, id="unnamed-tmpfile"), pytest.param(True, id="named-fallback")]


@pytest.fixture(params=MODES)
def named(request, monkeypatch):
    """Both ways a file is created: O_TMPFILE, and the named fallback (PARITY_TMPFILE=named)."""
    monkeypatch.setattr(atomic, "NAMED", request.param)
    return request.param


@pytest.fixture
def place(tmp_path):
    """The output's parent, and an attacker's folder outside it (with a file of its own)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    (attacker / "theirs.txt").write_bytes(b"attacker")
    return parent, attacker


def content(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def staging_names(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if temps.TEMP.fullmatch(n)]


def files(first=None):
    """Three small files; `first(f)` runs (before writing) when the first one is written."""
    def write_first(f):
        if first is not None:
            first()
        f.write(b"one")
    return [("a.json", write_first, None), ("b.bin", lambda f: f.write(b"two" * 1000), None),
            ("c.txt", lambda f: f.write(b"three"), None)]


WRITTEN = {"a.json": b"one", "b.bin": b"two" * 1000, "c.txt": b"three"}


def swap_for_symlink(parent: Path, attacker: Path) -> str:
    """What a racing process does: move parity's staging folder away (under a name of its own, in the same
    parent) and put a symlink to its own folder under the staging folder's name."""
    [name] = staging_names(parent)
    os.rename(parent / name, parent / "stolen")
    os.symlink(attacker, parent / name)
    return name


# ---------------------------------------------------------------- the staging folder swapped for a symlink
@pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
def test_staging_folder_swapped_while_written_is_refused_and_nothing_reaches_the_attacker(place, named, force):
    parent, attacker = place
    out = parent / "out"
    swapped = []
    with pytest.raises(CheckpointError, match="another process replaced the folder parity was writing") as e:
        atomic.atomic_folder(out, files(lambda: swapped.append(swap_for_symlink(parent, attacker))), force=force)
    assert str(out) in str(e.value) and "nothing was written" in str(e.value) and "\n" not in str(e.value)
    assert swapped
    assert content(attacker) == {"theirs.txt": b"attacker"}  # no file of parity's went to the attacker
    assert not out.is_symlink() and not out.exists()
    # only the attacker's own entries are left: its symlink (not followed, not removed) and the folder it
    # moved aside, which was parity's, emptied through parity's descriptor
    assert sorted(os.listdir(parent)) == sorted([swapped[0], "stolen"])
    assert os.readlink(parent / swapped[0]) == str(attacker)
    assert os.listdir(parent / "stolen") == []


def test_staging_folder_swapped_right_after_it_was_made_is_refused(place, named, monkeypatch):
    """The swap before parity opened the folder: the open does not follow the symlink."""
    parent, attacker = place
    out = parent / "out"
    real_mkdir = os.mkdir
    swapped = []

    def mkdir(path, mode=0o777, *, dir_fd=None):
        real_mkdir(path, mode, dir_fd=dir_fd)
        if temps.TEMP.fullmatch(os.fspath(path)) and not swapped:
            swapped.append(swap_for_symlink(parent, attacker))

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(CheckpointError, match="another process replaced the folder parity was writing"):
        atomic.atomic_folder(out, files())
    assert content(attacker) == {"theirs.txt": b"attacker"}
    assert not out.is_symlink() and not out.exists()
    assert sorted(os.listdir(parent)) == sorted([swapped[0], "stolen"])
    assert os.listdir(parent / "stolen") == []


def test_output_swapped_for_a_symlink_as_it_is_named_is_an_error(place, named, monkeypatch):
    """The swap right after the naming: parity says the output is not its folder (as atomic_write does)."""
    parent, attacker = place
    out = parent / "out"
    real = atomic.rename2

    def rename2(folder, old, new, flags):
        real(folder, old, new, flags)
        os.rename(out, parent / "stolen")
        os.symlink(attacker, out)

    monkeypatch.setattr(atomic, "rename2", rename2)
    with pytest.raises(CheckpointError, match="another process replaced or removed the output"):
        atomic.atomic_folder(out, files())
    assert content(attacker) == {"theirs.txt": b"attacker"}


# ---------------------------------------------------------------- naming: no clobber, force, symlinks
@pytest.fixture(params=["renameat2", "without-renameat2"])
def naming(request, monkeypatch):
    """renameat2, and the fallback where the C library has none."""
    if request.param == "without-renameat2":
        monkeypatch.setattr(renameat2, "RENAMEAT2", None)
    return request.param


def test_a_new_folder_is_written_and_named(place, named, naming):
    parent, _ = place
    out = parent / "out"
    assert atomic.atomic_folder(out, files()) == sum(map(len, WRITTEN.values()))
    assert content(out) == WRITTEN and not out.is_symlink()
    assert os.listdir(parent) == ["out"]
    assert (out.stat().st_mode & 0o777) == (0o777 & ~atomic._umask())


def test_force_replaces_an_existing_folder_and_leaves_no_temporary_entry(place, named, naming):
    parent, _ = place
    out = parent / "out"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    (out / "sub").mkdir()
    (out / "sub" / "deep.bin").write_bytes(b"deep")
    atomic.atomic_folder(out, files(), force=True)
    assert content(out) == WRITTEN
    assert os.listdir(parent) == ["out"]


def test_an_existing_output_is_refused_without_force_and_left_untouched(place, named, naming):
    parent, _ = place
    out = parent / "out"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        atomic.atomic_folder(out, files())
    assert content(out) == {"old.bin": b"old"}
    assert os.listdir(parent) == ["out"]


def test_an_output_that_appears_while_parity_writes_is_refused_and_left_untouched(place, named, naming):
    parent, _ = place
    out = parent / "out"

    def appear():
        out.mkdir()
        (out / "theirs.bin").write_bytes(b"theirs")

    with pytest.raises(OutputExistsError, match="it appeared while parity wrote"):
        atomic.atomic_folder(out, files(appear))
    assert content(out) == {"theirs.bin": b"theirs"}
    assert os.listdir(parent) == ["out"]


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-folder", "dangling"])
def test_a_symlink_at_the_output_name_is_never_followed(place, named, naming, dangling):
    parent, attacker = place
    out = parent / "out"
    target = attacker / "gone" if dangling else attacker
    os.symlink(target, out)
    with pytest.raises(OutputExistsError):
        atomic.atomic_folder(out, files())
    assert out.is_symlink() and os.readlink(out) == str(target)
    atomic.atomic_folder(out, files(), force=True)  # the link entry itself is replaced
    assert not out.is_symlink() and content(out) == WRITTEN
    assert content(attacker) == {"theirs.txt": b"attacker"}  # its target untouched
    assert os.listdir(parent) == ["out"]


def test_a_failed_write_leaves_nothing(place, named, naming):
    parent, _ = place
    out = parent / "out"

    def fail(source):
        raise CheckpointError("the check failed")

    broken = files()[:2] + [("c.txt", lambda f: f.write(b"three"), fail)]
    with pytest.raises(CheckpointError, match="the check failed"):
        atomic.atomic_folder(out, broken)
    assert os.listdir(parent) == []


def test_the_stale_folder_of_a_dead_run_is_still_removed(place, named):
    parent, _ = place
    dead = parent / ".parity-999999999-0123456789ab.tmp"  # no process has that id
    dead.mkdir(0o700)  # private, as parity makes its staging folders
    (dead / "x.bin").write_bytes(b"x")
    # named alike but not private: a user's (a copy, say), never taken for a leftover
    kept = parent / ".parity-999999999-ba9876543210.tmp"
    kept.mkdir(0o755)
    atomic.atomic_folder(parent / "out", files())
    assert sorted(os.listdir(parent)) == sorted(["out", kept.name])


# ---------------------------------------------------------------- FileSource whose opening failed
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_file_source_that_could_not_be_opened_is_finalized_quietly(tmp_path, monkeypatch, capfd):
    path = tmp_path / "x.bin"
    path.write_bytes(b"x")
    real_open = os.open
    unraisable = []

    def fail(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", fail)
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    with pytest.raises(CheckpointError, match="Too many open files"):
        FileSource(path)
    gc.collect()  # the half-built object is finalized by now
    assert unraisable == []
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------ a signal the moment a temporary entry is made
class Signalled(BaseException):
    """What the CLI's SIGTERM handler raises (cli_support.Stopped), so that every `finally` runs."""


@pytest.fixture
def raising_sigterm():
    """The CLI's SIGTERM handler, and a second thread, as torch and Paddle start theirs: the kernel may hand
    a process-directed signal to any thread that does not block it (a mask in one thread held nothing back
    under pytest-xdist, whose workers run a thread of their own)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Signalled()))
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()
    yield
    done.set()
    other.join()
    signal.signal(signal.SIGTERM, previous)


def signal_after(monkeypatch, call: str, arg: int):
    """SIGTERM to this process just after os.`call` made an entry named as parity's temporaries are (its
    argument `arg`): the handler's exception comes before the caller has recorded the name, unless the
    signal is held (seen in CI as a `.parity-*.tmp` left after SIGTERM on a busy machine)."""
    real = getattr(os, call)

    def then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        if temps.TEMP.fullmatch(os.path.basename(os.fspath(args[arg]))):
            os.kill(os.getpid(), signal.SIGTERM)
        return result
    monkeypatch.setattr(os, call, then_signal)


@pytest.mark.parametrize("named, force", [(True, False), (False, True), (True, True)],
                         ids=["named-fallback", "unnamed-tmpfile-force", "named-fallback-force"])
def test_a_signal_as_a_temporary_file_is_made_leaves_nothing(place, monkeypatch, raising_sigterm, named, force):
    """(An unnamed file written without force has no temporary name: nothing to leave.)"""
    parent, _ = place
    out = parent / "x.bin"
    monkeypatch.setattr(atomic, "NAMED", named)
    if force:
        out.write_bytes(b"old")
        signal_after(monkeypatch, "link", 1)  # the written file linked beside the output
    else:
        signal_after(monkeypatch, "open", 0)  # the file created under a temporary name
    with pytest.raises(Signalled):
        atomic.atomic_write(out, lambda f: f.write(b"new"), force=force)
    assert os.listdir(parent) == (["x.bin"] if force else [])
    assert not force or out.read_bytes() in (b"old", b"new")  # renamed over it, or not yet


def test_a_signal_as_a_staging_folder_is_made_leaves_nothing(place, monkeypatch, raising_sigterm):
    parent, _ = place
    signal_after(monkeypatch, "mkdir", 0)
    with pytest.raises(Signalled):
        atomic.atomic_folder(parent / "out", files())
    assert os.listdir(parent) == []
    with pytest.raises(Signalled):
        with temps.staging_folder(parent):
            pass
    assert os.listdir(parent) == []
