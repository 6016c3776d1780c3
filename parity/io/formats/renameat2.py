"""Linux's renameat2 through ctypes (Python has no binding), and entry operations by a folder's
descriptor that never follow a symlink: what naming a folder atomically needs."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # <linux/fs.h>


def load_renameat2():
    """libc's renameat2 (glibc 2.28 and later), or None: Python has no binding for it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


RENAMEAT2 = load_renameat2()


class NoRenameat2(Exception):
    """renameat2, or the flag asked for, is not there (the C library, the kernel or the filesystem)."""


def rename2(folder: int, old: str, new: str, flags: int) -> None:
    """renameat2 of `old` to `new`, both in `folder`: OSError as os.rename raises it, NoRenameat2 where
    renameat2 or `flags` is not supported."""
    if RENAMEAT2 is None:
        raise NoRenameat2
    if RENAMEAT2(folder, os.fsencode(old), folder, os.fsencode(new), flags) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # an old kernel, or a filesystem without the flag
        raise NoRenameat2
    raise OSError(code, os.strerror(code), old, None, new)


def same_entry(name: str, folder: int, info: os.stat_result) -> bool:
    """Whether `name` in `folder` is (not links to) the file or folder `info` describes."""
    try:
        return os.path.samestat(os.stat(name, dir_fd=folder, follow_symlinks=False), info)
    except FileNotFoundError:
        return False


def remove_entry(name: str, folder: int) -> None:
    """Remove `name` in `folder`, a folder with everything in it or any other entry, never following a
    symlink (rmtree with dir_fd walks by descriptors)."""
    if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
        shutil.rmtree(name, dir_fd=folder)
    else:
        os.unlink(name, dir_fd=folder)
