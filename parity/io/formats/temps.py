"""parity's temporary files and folders: their names, their removal, and the signals held while one is made.

Every temporary entry parity makes beside an output is named `.parity-<pid>-<random>.tmp`, so that a later
run removes those of processes that no longer exist (a SIGKILL cannot be caught; `remove_stale`).

The CLI turns SIGINT, SIGTERM and SIGHUP into exceptions, so that every `finally` runs on the way out and
removes what was half-written. A handler that ran just after an entry was made, before its name reached
the variable that `finally` reads, would leave it behind (seen once in CI on a busy machine: a
`.parity-<pid>-*.tmp` left after SIGTERM). Inside `signals_held()` those signals wait; the first that
came is raised as the block ends, when the name is known.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ...errors import CheckpointError
from .source import holds_input

TEMP = re.compile(r"\.parity-(\d+)-[0-9a-f]{12}\.tmp")
HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
T = TypeVar("T")


def temp_name() -> str:
    """A fresh temporary name for this process."""
    return f".parity-{os.getpid()}-{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP caught and held for the block; the first that came is handed, as the
    block ends, to the handler that was in place (which raises: the CLI's, Python's for SIGINT).

    Handlers are swapped rather than the signals masked: a process-directed signal goes to any thread
    that does not block it (torch's and Paddle's own threads, pytest-xdist's), and Python then runs its
    handler in the main thread at once, so a mask in one thread holds nothing back. Outside the main
    thread, where handlers cannot be set, nothing is held (the main thread's handlers run there anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    try:
        for sig in HELD:
            if signal.getsignal(sig) is not None:  # None: a handler set outside Python, left alone
                previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            _deliver(caught[0], previous[caught[0]])


def _deliver(signum: int, handler) -> None:
    """What `signum` would have done under `handler`, now that it is back in place."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # its default action, the handler being back: the process ends


@contextlib.contextmanager
def staging_folder(parent) -> Iterator[Path]:
    """A private new folder in `parent` for files that a library writes by name (an exporter), removed when
    the block ends (what the block named elsewhere has left it). Named as parity's temporary files are,
    so that a run killed before removing it leaves it to `remove_stale`."""
    parent, path = Path(parent), None
    try:
        with signals_held():  # the folder and its name together
            name, _ = fresh(lambda name: os.mkdir(parent / name, 0o700),
                            "could not create a temporary folder under a fresh name")
            path = parent / name
        yield path
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def fresh(make: Callable[[str], T], failure: str) -> tuple[str, T]:
    """(name, make(name)) under a fresh temporary name, another where `make` finds one taken
    (FileExistsError); CheckpointError(`failure`) after eight."""
    for _ in range(8):
        name = temp_name()
        try:
            return name, make(name)
        except FileExistsError:
            continue
    raise CheckpointError(failure)


def remove_stale(folder: int) -> list[str]:
    """Remove the temporary files and folders that parity processes which no longer run left in `folder`
    (a descriptor); returns their names. Only regular files and folders of this user, named as parity
    names them and private as parity makes them (a file 0600, a folder 0700), and never an input of this
    process or a folder holding one (a folder is removed without following any symlink in it)."""
    removed = []
    for name in os.listdir(folder):
        m = TEMP.fullmatch(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's process runs under that id
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if info.st_uid != os.getuid() or holds_input(f"/proc/self/fd/{folder}/{name}", info):
                continue  # another user's, or named as parity names its files but what this run reads
            if stat.S_IMODE(info.st_mode) != (0o600 if stat.S_ISREG(info.st_mode) else 0o700):
                continue  # parity makes them private (0600, a folder 0700) until named: a copied file is not
            if stat.S_ISREG(info.st_mode):
                os.unlink(name, dir_fd=folder)
                removed.append(name)
            elif stat.S_ISDIR(info.st_mode):
                shutil.rmtree(name, dir_fd=folder)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed
