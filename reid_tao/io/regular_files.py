"""What is at a path, and reading inputs that must not block (imports only ``errors``).

Inputs that must not block are read with :func:`read_regular_file`: a FIFO or device at the path raises
:class:`NotARegularFile` (an OSError) instead of waiting forever for a writer. :func:`not_a_regular_file`
says what is there in words; the atomic writers use it to refuse to replace a device node.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["NotARegularFile", "file_kind", "not_a_regular_file", "read_regular_file"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)

NODES = frozenset(name for _, name in _KINDS) - {"a folder"}  # what an output must never be renamed over


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is in words ("a FIFO (named pipe)", "a character device", ...)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is (following symlinks) when something is there that is not a regular file, in words ("a
    FIFO (named pipe)", "a folder", "a dangling symbolic link", ...); None for a regular file or nothing."""
    try:
        return file_kind(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return "a dangling symbolic link" if os.path.islink(path) else None
    except OSError as error:  # e.g. ELOOP: a symlink loop
        return f"unreadable ({error.strerror})"


class NotARegularFile(OSError):
    """The path is a FIFO, a device, a socket or a folder: reading it could block forever or never end."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", str(path))


NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs in the file system
_READ_FLAGS = os.O_RDONLY | NONBLOCK | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed). Raises :class:`NotARegularFile` for a FIFO,
    device, socket or folder without opening it for a blocking read (O_NONBLOCK, then fstat: a node swapped in
    between is caught too), an ``OSError`` (EFBIG) for a file longer than ``max_bytes``, and the usual
    OSErrors (missing, unreadable, symlink loop) otherwise."""
    kind = file_kind(os.stat(path).st_mode)  # before opening: opening some devices has effects of its own
    if kind is not None:
        raise NotARegularFile(path, kind)
    fd = os.open(path, _READ_FLAGS)
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotARegularFile(path, kind)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"it is over {max_bytes} bytes", str(path))
    return data
