"""The one way parity writes a file: unnamed until it is complete and checked, then linked into place.

The file is created without a name (`O_TMPFILE`) in the target's folder, written and read back through
that one descriptor, and given its name only at the end (`linkat`), so no other process can see,
replace or redirect it while it is written, and a killed parity leaves nothing behind. A name is
never reopened: a symlink planted at any name parity uses is never followed. Without an existing
output, the link itself is the no-clobber test (it fails if the name exists, symlinks included);
with `force`, the file is linked under a fresh temporary name and renamed over the output (a rename
replaces the entry, never what a symlink there points to).

Every name is made relative to a descriptor of the folder it is in, opened once. A folder output is
built in a new folder that parity makes beside the output (`mkdir`, exclusive), opens once without
following symlinks and checks is the folder it made (device and inode); each of its files is then
written as above through that one descriptor, so another process that renames entries in the parent
(the staging folder swapped for a symlink to a folder of its own) cannot redirect a single file.
Before the folder is named, its name is checked to still be the folder parity holds open; it is then
named with `renameat2`: `RENAME_NOREPLACE` is the no-clobber test, and with `force` an existing output
is swapped with it (`RENAME_EXCHANGE`, atomic) and removed without following any symlink in it. After
naming, as after linking a file, the output's name is checked to be what parity wrote.

Where the filesystem has no `O_TMPFILE`, the file is created under a temporary name, exclusively and
without following symlinks (`O_CREAT | O_EXCL | O_NOFOLLOW`). Such names carry parity's process id
(`.parity-<pid>-<random>.tmp`), as staging folders do, so that a later run removes those of processes
that no longer exist (a SIGKILL cannot be caught); SIGTERM, SIGHUP and SIGINT remove them on the way
out (see the CLI).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from ...errors import CheckpointError, OutputExistsError
from . import temps
from .temps import remove_stale, signals_held
from .renameat2 import RENAME_EXCHANGE, RENAME_NOREPLACE, NoRenameat2, remove_entry, rename2, same_entry
from .source import FileSource, Source

NAMED = os.environ.get("PARITY_TMPFILE") == "named"  # test and diagnosis switch: the fallback path


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


def _create(folder: int) -> tuple[int, str | None]:
    """A new file in `folder`, open for reading and writing: unnamed where the filesystem allows."""
    if not NAMED and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=folder), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    name, fd = temps.fresh(lambda name: os.open(name, flags, 0o600, dir_fd=folder),
                           "could not create a temporary file under a fresh name")
    return fd, name


_PROC = os.path.isdir("/proc/self/fd")


def _open_folder(path: Path) -> int:
    """A descriptor of the folder that `path` is to be written in (every name is then made relative to it)."""
    try:
        return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CheckpointError(f"cannot write in {path.parent} ({e.strerror}); choose another "
                              "output", path=path) from None


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
    beside = None
    try:
        with signals_held():  # a fresh name beside the output, then renamed over it (replacing the entry)
            beside = _link_beside(fd, folder, temp)
        os.rename(beside, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        if beside is not None:
            _unlink(beside, folder)
        raise


def _link_beside(fd: int, folder: int, temp: str | None) -> str:
    return temps.fresh(lambda beside: _link(fd, folder, beside, temp),
                       "could not link the written file under a fresh temporary name")[0]


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
    try:
        return _write_in(folder, path.name, path, write, check, force, mode, tidy=True)
    finally:
        os.close(folder)


def _write_in(folder: int, name: str, path: Path, write: Callable[[BinaryIO], None],
              check: Callable[[Source], None] | None, force: bool, mode: int | None, tidy: bool) -> int:
    """atomic_write's core: the file `name` in the folder open as `folder` (`path` names it in messages).
    `tidy`: remove dead runs' temporary files first (not in a staging folder parity has just made)."""
    temp: str | None = None
    fd = -1
    try:
        if not force and _exists(name, folder):
            raise OutputExistsError(f"{path} already exists")
        if tidy:
            remove_stale(folder)
        with signals_held():  # the file and its name together: a signal between them would leave it
            fd, temp = _create(folder)
        with os.fdopen(fd, "w+b", closefd=False) as f:
            write(f)
            f.flush()
        if check is not None:
            check(FileSource(path, fd))
        os.fchmod(fd, (0o666 & ~_umask()) if mode is None else mode)
        _publish(fd, folder, name, temp, force)
        written = os.fstat(fd)
        try:
            named = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if named is None or not os.path.samestat(named, written):
            raise CheckpointError("another process replaced or removed the output as parity named it; "
                                  "what is there now is not parity's file", path=path)
        return written.st_size
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists (it appeared while parity wrote); nothing was "
                                "written") from None
    except OSError as e:
        raise CheckpointError(f"writing failed ({e.strerror or e}); nothing was written", path=path) from None
    finally:
        if temp is not None:
            _unlink(temp, folder)
        if fd >= 0:
            os.close(fd)


def write_bytes(path, data: bytes, force: bool = True) -> None:
    """A small file (a report, a cache entry) written atomically, replacing what was there."""
    atomic_write(path, lambda f: f.write(data), force=force)


def _make_staging(parent: int, path: Path) -> tuple[str, int, os.stat_result]:
    """A new folder in `parent` under a fresh temporary name, open: (its name, its descriptor, its fstat).
    It is made 0700 (no other user can add to it while it is built) and opened once, without following
    symlinks; the folder opened is checked to be the one made and this user's, so a folder swapped in
    between (a symlink is not opened at all) is refused."""
    # exclusive: never an existing folder or a symlink's target
    temp, _ = temps.fresh(lambda name: os.mkdir(name, 0o700, dir_fd=parent),
                          "could not create a temporary folder under a fresh name")
    made: os.stat_result | None = None
    folder = -1
    try:
        made = os.stat(temp, dir_fd=parent, follow_symlinks=False)
        try:
            folder = os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):  # a symlink or another entry in its place
                raise _replaced(path) from None
            raise
        held = os.fstat(folder)
        if not os.path.samestat(held, made) or held.st_uid != os.geteuid():
            raise _replaced(path)
        return temp, folder, held
    except BaseException:
        if folder >= 0:
            os.close(folder)
        # the folder made is removed where its name still is it (it is empty): never what took its place
        if made is not None and stat.S_ISDIR(made.st_mode) and same_entry(temp, parent, made):
            try:
                os.rmdir(temp, dir_fd=parent)
            except OSError:
                pass
        raise


def _replaced(path: Path) -> CheckpointError:
    return CheckpointError("another process replaced the folder parity was writing; nothing was written", path=path)


def _name_folder(parent: int, temp: str, name: str, held: os.stat_result, path: Path, force: bool) -> str | None:
    """Give the staging folder `temp` (held open, `held`) the name `name`. Without `force`, renameat2
    RENAME_NOREPLACE: it fails if the name exists, symlinks included. With `force` and an existing entry,
    RENAME_EXCHANGE swaps the two atomically, so the name never goes missing and never points elsewhere.
    Returns the temporary name the replaced entry now has (the caller removes it), or None."""
    for _ in range(8):
        if not same_entry(temp, parent, held):  # the staging name was moved or swapped for something else
            raise _replaced(path)
        try:
            before = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            before = None
        if before is not None and not force:
            raise OutputExistsError(f"{path} already exists (it appeared while parity wrote); nothing was written")
        try:
            if before is None:
                rename2(parent, temp, name, RENAME_NOREPLACE)
                return None
            rename2(parent, temp, name, RENAME_EXCHANGE)
            # the replaced entry now bears the temporary name: removed only if it is the entry that was
            # at the output (never something a racing process put there since)
            return temp if same_entry(temp, parent, before) else None
        except FileExistsError:  # the output appeared since it was looked at
            continue
        except FileNotFoundError:  # the output went away since it was looked at (or `temp` did: checked next)
            continue
        except NoRenameat2:
            return _name_folder_without_renameat2(parent, temp, name, path, force)
    raise CheckpointError("the output kept changing while parity named it; nothing was written", path=path)


def _name_folder_without_renameat2(parent: int, temp: str, name: str, path: Path, force: bool) -> str | None:
    """_name_folder where renameat2 (or its flags) is missing: plain renames, which never follow a symlink
    either, but the test for an existing output is a separate step (an output that appears between the
    two is replaced), and with `force` the output is first moved aside (its name is briefly missing)."""
    old = None
    if _exists(name, parent):
        if not force:
            raise OutputExistsError(f"{path} already exists (it appeared while parity wrote); nothing was written")
        old = temps.temp_name()
        os.rename(name, old, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        if old is not None:  # the old output back under its name
            try:
                os.rename(old, name, src_dir_fd=parent, dst_dir_fd=parent)
            except OSError:
                pass
        raise
    return old


def atomic_folder(path, files: list[tuple[str, Callable[[BinaryIO], None], Callable[[Source], None] | None]],
                  force: bool = False) -> int:
    """Write a folder atomically: each (name, write, check) file is written and checked (as atomic_write
    does) in a new folder beside `path`, through one descriptor of it, and that folder then takes the name
    `path`. Without `force`, an existing `path` is refused; with it, the old entry is swapped out and
    removed once the new folder is in place. Returns the files' total size. On any failure nothing is left."""
    path = Path(path)
    parent = _open_folder(path)
    temp: str | None = None  # the staging folder's name while it is parity's to remove
    folder = -1
    written: list[str] = []
    try:
        if not force and _exists(path.name, parent):
            raise OutputExistsError(f"{path} already exists")
        remove_stale(parent)
        with signals_held():  # the folder and its name together (see _write_in)
            temp, folder, held = _make_staging(parent, path)
        size = 0
        for name, write, check in files:
            if name in ("", ".", "..") or "/" in name:
                raise CheckpointError(f"{name!r} is not a file name", path=path)
            size += _write_in(folder, name, path / name, write, check, False, None, tidy=False)
            written.append(name)
        os.fchmod(folder, 0o777 & ~_umask())  # a new folder's usual mode, now that it is complete
        old = _name_folder(parent, temp, path.name, held, path, force)
        temp = None  # named: no longer a staging folder to remove
        if not same_entry(path.name, parent, held):
            raise CheckpointError("another process replaced or removed the output as parity named it; "
                                  "what is there now is not parity's folder", path=path)
        if old is not None:  # the replaced entry, removed without following any symlink in it
            remove_entry(old, parent)
        return size
    except OSError as e:
        raise CheckpointError(f"writing failed ({e.strerror or e}); nothing was written", path=path) from None
    finally:
        if folder >= 0:
            # Not named (a signal can land just after the rename: the output's name tells): the files
            # written are removed through the descriptor, which reaches parity's folder wherever another
            # process moved it, then the folder by name only where that name still is parity's folder
            # (rmdir removes nothing but an empty folder, and never follows a symlink).
            if temp is not None and not same_entry(path.name, parent, held):
                for name in written:
                    _unlink(name, folder)
                if same_entry(temp, parent, held):
                    try:
                        os.rmdir(temp, dir_fd=parent)
                    except OSError:
                        pass
            os.close(folder)
        os.close(parent)


def publish_folder(staging: Path, path, force: bool = False) -> None:
    """Name a complete `staging_folder` beside `path` as `atomic_folder` names its own (`force`: swap)."""
    path = Path(path)
    parent = _open_folder(path)
    try:
        held = os.stat(staging.name, dir_fd=parent, follow_symlinks=False)
        os.chmod(staging, 0o777 & ~_umask())  # a new folder's usual mode, now that it is complete
        old = _name_folder(parent, staging.name, path.name, held, path, force)
        if old is not None:
            remove_entry(old, parent)
    except OSError as e:
        raise CheckpointError(f"writing failed ({e.strerror or e}); nothing was written", path=path) from None
    finally:
        os.close(parent)
