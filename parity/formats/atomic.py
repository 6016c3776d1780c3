"""The one way parity writes a file: unnamed until it is complete and checked, then linked into place.

The file is created without a name (`O_TMPFILE`) in the target's folder, written and read back through
that one descriptor, and given its name only at the end (`linkat`), so no other process can see,
replace or redirect it while it is written, and a killed parity leaves nothing behind. A name is
never reopened: a symlink planted at any name parity uses is never followed. Without an existing
output, the link itself is the no-clobber test (it fails if the name exists, symlinks included);
with `force`, the file is linked under a fresh temporary name and renamed over the output (a rename
replaces the entry, never what a symlink there points to).

Where the filesystem has no `O_TMPFILE`, the file is created under a temporary name, exclusively and
without following symlinks (`O_CREAT | O_EXCL | O_NOFOLLOW`). Such names carry parity's process id
(`.parity-<pid>-<random>.tmp`), so that a later run removes those of processes that no longer exist
(a SIGKILL cannot be caught); SIGTERM, SIGHUP and SIGINT remove them on the way out (see the CLI).
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import CheckpointError, OutputExistsError
from .source import FileSource, Source

TEMP = re.compile(r"\.parity-(\d+)-[0-9a-f]{12}\.tmp")
NAMED = os.environ.get("PARITY_TMPFILE") == "named"  # test and diagnosis switch: the fallback path


def _temp_name() -> str:
    return f".parity-{os.getpid()}-{secrets.token_hex(6)}.tmp"


def staging_folder(parent) -> Path:
    """A private new folder in `parent` for files that a library writes by name (an exporter), named as
    parity's temporary files are, so that a run killed before removing it leaves it to `remove_stale`."""
    for _ in range(8):
        path = Path(parent) / _temp_name()
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise CheckpointError("could not create a temporary folder under a fresh name")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def remove_stale(folder: int) -> list[str]:
    """Remove the temporary files and folders that parity processes which no longer run left in `folder`
    (a descriptor); returns their names. Only regular files and folders of this user, named as parity
    names them (a folder is removed without following any symlink in it)."""
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
            if info.st_uid != os.getuid():
                continue
            if stat.S_ISREG(info.st_mode):
                os.unlink(name, dir_fd=folder)
                removed.append(name)
            elif stat.S_ISDIR(info.st_mode):
                shutil.rmtree(name, dir_fd=folder)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _create(folder: int) -> tuple[int, str | None]:
    """A new file in `folder`, open for reading and writing: unnamed where the filesystem allows."""
    if not NAMED and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=folder), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    for _ in range(8):
        name = _temp_name()
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(name, flags, 0o600, dir_fd=folder), name
        except FileExistsError:
            continue
    raise CheckpointError("could not create a temporary file under a fresh name")


_PROC = os.path.isdir("/proc/self/fd")


def _open_folder(path: Path) -> int:
    """A descriptor of the folder that `path` is to be written in (every name is then made relative to it)."""
    try:
        return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write in {path.parent} ({e.strerror}); choose another "
                              "output") from None


def _link(fd: int, folder: int, name: str, temp: str | None) -> None:
    """Give the open file `name` (EEXIST if the name exists): linkat through /proc, which reaches the
    descriptor's own file whatever was done to its temporary name; by that name only without /proc."""
    if _PROC:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
    else:
        os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)


def _publish(fd: int, folder: int, name: str, temp: str | None, force: bool) -> None:
    if not force:
        _link(fd, folder, name, temp)  # the no-clobber test and the naming in one step
        return
    for _ in range(8):  # a fresh name beside the output, then renamed over it (replacing the entry)
        beside = _temp_name()
        try:
            _link(fd, folder, beside, temp)
            break
        except FileExistsError:
            continue
    else:
        raise CheckpointError("could not link the written file under a fresh temporary name")
    try:
        os.rename(beside, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        _unlink(beside, folder)
        raise


def _unlink(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except OSError:
        pass


def atomic_write(path, write: Callable[[BinaryIO], None], check: Callable[[Source], None] | None = None,
                 force: bool = False, mode: int | None = None) -> int:
    """Write `path` atomically: write(f) into a new file, check(source) on what was written (read back
    through the same descriptor), then give it its name; returns its size in bytes (told by the
    descriptor: the name may be another process's by then). CheckpointError (nothing left) on any failure.

    Without `force`, an existing `path` (a symlink or a dangling symlink too) is refused; with it, the
    entry is replaced. `mode` defaults to a new file's usual mode (0666 less the umask).
    """
    path = Path(path)
    folder = _open_folder(path)
    temp: str | None = None
    fd = -1
    try:
        if not force and _exists(path.name, folder):
            raise OutputExistsError(f"{path} already exists")
        remove_stale(folder)
        fd, temp = _create(folder)
        with os.fdopen(fd, "w+b", closefd=False) as f:
            write(f)
            f.flush()
        if check is not None:
            check(FileSource(path, fd))
        os.fchmod(fd, (0o666 & ~_umask()) if mode is None else mode)
        _publish(fd, folder, path.name, temp, force)
        written = os.fstat(fd)
        try:
            named = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if named is None or not os.path.samestat(named, written):
            raise CheckpointError(f"{path}: another process replaced or removed the output as parity named it; "
                                  "what is there now is not parity's file")
        return written.st_size
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists (it appeared while parity wrote); nothing was "
                                "written") from None
    except OSError as e:
        raise CheckpointError(f"{path}: writing failed ({e.strerror or e}); nothing was written") from None
    finally:
        if temp is not None:
            _unlink(temp, folder)
        if fd >= 0:
            os.close(fd)
        os.close(folder)


def write_bytes(path, data: bytes, force: bool = True) -> None:
    """A small file (a report, a cache entry) written atomically, replacing what was there."""
    atomic_write(path, lambda f: f.write(data), force=force)


def atomic_folder(path, files: list[tuple[str, Callable[[BinaryIO], None], Callable[[Source], None] | None]],
                  force: bool = False) -> int:
    """Write a folder atomically: each (name, write, check) file is written and checked (atomic_write) in
    a new folder beside `path`, which then takes the name `path`. Without `force`, an existing `path` is
    refused; with it, the old entry is moved aside and removed once the new folder is in place. Returns
    the files' total size. On any failure nothing is left."""
    path = Path(path)
    parent = _open_folder(path)
    temp: str | None = None
    try:
        if not force and _exists(path.name, parent):
            raise OutputExistsError(f"{path} already exists")
        remove_stale(parent)
        for _ in range(8):
            temp = _temp_name()
            try:
                os.mkdir(temp, 0o777, dir_fd=parent)  # exclusive: never an existing folder or a symlink's target
                break
            except FileExistsError:
                temp = None
        if temp is None:
            raise CheckpointError("could not create a temporary folder under a fresh name")
        building = path.parent / temp
        size = sum(atomic_write(building / name, write, check) for name, write, check in files)
        old = None
        if _exists(path.name, parent):
            if not force:
                raise OutputExistsError(f"{path} already exists (it appeared while parity wrote); nothing was "
                                        "written")
            old = _temp_name()
            os.rename(path.name, old, src_dir_fd=parent, dst_dir_fd=parent)
        os.rename(temp, path.name, src_dir_fd=parent, dst_dir_fd=parent)
        temp = None
        if old is not None:  # the replaced entry, removed without following any symlink in it
            info = os.stat(old, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(old, dir_fd=parent)
            else:
                os.unlink(old, dir_fd=parent)
        return size
    except OSError as e:
        raise CheckpointError(f"{path}: writing failed ({e.strerror or e}); nothing was written") from None
    finally:
        if temp is not None:
            shutil.rmtree(temp, dir_fd=parent, ignore_errors=True)
        os.close(parent)
