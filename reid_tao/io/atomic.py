"""Atomic file writes, the checks on an output's target, staging folders and appends (imports only ``errors``
and :mod:`.regular_files`).

Atomic writes go to a unique temporary sibling (``.NAME.tmpPID-RANDOM`` in the target's folder), are
flushed and fsynced, then ``os.replace``d over the target: a reader sees the old file or the new one,
never half a file. On any exception (``BaseException``: also KeyboardInterrupt) the temporary file is
removed and the previous target is left untouched. The temporary file is created with
``os.open(..., 0o666)``, so the final file's mode follows the process umask exactly as a plain
``open(path, "w")`` would (0644 under umask 022), unlike ``tempfile.mkstemp``'s 0600.

An output never replaces something that is not a regular file: a target that exists (through symlinks) as a
FIFO, a device node (``/dev/null``, ``/dev/full``) or a socket raises :class:`~reid_tao.errors.WriteError`
before anything is written and again just before the rename. Renaming over it would replace the device itself
(``/dev/null`` becomes a regular file when run as root) and report success on ``/dev/full``. Nothing is
written into /dev (except /dev/shm), /proc or /sys. A folder in the way is left to the rename, which refuses
it ("Is a directory").

A write that fails for an operating-system reason (disk full, file-size limit, read-only or forbidden
folder; also torch.save's RuntimeError around such an OSError) raises :class:`~reid_tao.errors.WriteError`
with one line naming the file and the reason.

torch and matplotlib are imported inside the helpers that need them, so importing this module is cheap.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reid_tao.errors import WriteError, first_line
from reid_tao.io.regular_files import NODES, NONBLOCK, file_kind, not_a_regular_file

__all__ = [
    "atomic_output",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_save_figure",
    "atomic_write_bytes",
    "staging_dir",
    "check_output_target",
    "append_line",
    "open_append",
]

_ATTEMPTS = 100  # unique names to try before giving up (a clash needs the same pid and 32 random bits)


def _temporary_name(target: Path, suffix: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{suffix}{os.getpid()}-{secrets.token_hex(4)}")


_SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")  # never a place for an output: /dev/stdout may be a link to a file


def _under(folder: str, top: str) -> bool:
    return folder == top or folder.startswith(top + "/")


def _system_folder(folder: str) -> bool:
    """/dev (except the /dev/shm tmpfs, a usual scratch place), /proc or /sys."""
    return os.name == "posix" and not _under(folder, "/dev/shm") and any(_under(folder, top) for top in _SYSTEM_FOLDERS)


def check_output_target(path: str | os.PathLike) -> None:
    """Raise WriteError when ``path`` is a FIFO, a device node or a socket (following symlinks), or lies in
    /dev, /proc or /sys: writing an output renames a new file over its path, which would replace that node
    (``/dev/null`` included, when run as root). A folder is left to the rename, which refuses it; a dangling
    link is replaced as a file is."""
    kind = not_a_regular_file(path)
    if kind in NODES:
        raise WriteError(
            f"cannot write {path}: it is {kind}, not a regular file, and an output replaces what is "
            "at its path; name a regular file or a new path"
        )
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if _system_folder(folder):
        raise WriteError(
            f"cannot write {path}: {folder} is a system folder, and an output replaces what is at its "
            "path; name a regular file or a new path"
        )


def _create_sibling(target: Path) -> tuple[int, Path]:
    """Create (O_EXCL) a fresh temporary sibling of ``target``, mode 0o666 minus the umask; (fd, path)."""
    check_output_target(target)
    _make_parent(target)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        temporary = _temporary_name(target)
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {target}")


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be: say so instead of "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target.parent)) from None


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (itself, or its cause/context: torch.save reports a failed write as a
    RuntimeError raised while handling the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


@contextmanager
def _reported_as_write_error(target: Path) -> Iterator[None]:
    """Turn a failed write of ``target`` into one WriteError line naming the file and the OS's reason."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as error:
        cause = _os_error_in(error)
        if cause is not None:
            reason = cause.strerror or first_line(cause)
        elif any(text in str(error) for text in _TORCH_WRITE_FAILURES):
            reason = first_line(error, limit=160)
        else:
            raise  # a RuntimeError that is not about writing the file
        raise WriteError(
            f"cannot write {target} ({reason}); any previous version is unchanged: free disk space, "
            "raise the file-size limit or choose a writable folder, then run the same command "
            "again"
        ) from None


def _replace(temporary: Path, target: Path) -> None:
    check_output_target(target)  # again: the node may have appeared while the output was written
    os.replace(temporary, target)


@contextmanager
def atomic_output(
    path: str | os.PathLike, binary: bool = False, encoding: str = "utf-8", fsync: bool = True
) -> Iterator[IO]:
    """Open ``path`` for writing atomically: yields a handle on a temporary sibling file (text, or
    bytes with ``binary=True``), renamed over ``path`` when the block ends without an exception.
    ``fsync=False`` skips the flush to disk (still complete or absent, but may be lost on a power cut)."""
    target = Path(path)
    with _reported_as_write_error(target):
        with _atomic_output(target, binary, encoding, fsync) as handle:
            yield handle


@contextmanager
def _atomic_output(target: Path, binary: bool, encoding: str, fsync: bool = True) -> Iterator[IO]:
    fd, temporary = _create_sibling(target)
    try:
        handle = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding)
    except BaseException:
        os.close(fd)
        _remove_quietly(temporary)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        _replace(temporary, target)
    except BaseException:
        _remove_quietly(temporary)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that take a file name (e.g. ``torch.onnx.export``): yields the path of a temporary
    sibling (already created, empty) to write to; renamed over ``path`` on success, removed on failure.

    The file keeps the umask-derived mode even when the writer replaces it with a file of its own.
    """
    target = Path(path)
    with _reported_as_write_error(target):
        with _atomic_path(target) as temporary:
            yield temporary


@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    fd, temporary = _create_sibling(target)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 minus the umask, applied by os.open
    finally:
        os.close(fd)
    try:
        yield temporary
        os.chmod(temporary, mode)
        _fsync_path(temporary)
        _replace(temporary, target)
    except BaseException:
        _remove_quietly(temporary)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a Path."""
    with atomic_output(path, encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``fsync=False``: see :func:`atomic_output`)."""
    with atomic_output(path, binary=True, fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a crash never leaves a torn checkpoint."""
    import torch

    with atomic_output(path, binary=True) as handle:
        torch.save(obj, handle)
    return Path(path)


def atomic_save_figure(figure: Any, path: str | os.PathLike, dpi: int, format: str = "png") -> Path:
    """Render a ``matplotlib.figure.Figure`` to ``path`` atomically, on an Agg canvas (never pyplot's
    backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # attach an Agg canvas: independent of the user's pyplot backend
    with atomic_output(path, binary=True) as handle:
        figure.savefig(handle, format=format, dpi=dpi)
    return Path(path)


@contextmanager
def staging_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty sibling folder of ``path`` (mode 0o777 minus the umask) to build a whole tree in.

    The block moves it into place itself (``os.rename``: how to treat an existing ``path`` is the
    caller's choice); whatever is left of it when the block ends, on failure or otherwise, is removed.
    """
    target = Path(path)
    with _reported_as_write_error(target):
        _make_parent(target)
        for _ in range(_ATTEMPTS):
            staging = _temporary_name(target)
            try:
                os.mkdir(staging, 0o777)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"cannot create a temporary folder beside {target}")
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# appending


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with a single O_APPEND write: the kernel moves to the end and writes in one step, so
    lines from a resumed run, or from two processes, never interleave and earlier lines are never rewritten
    (rewriting the whole file per line would cost O(n) per line and lose a concurrent writer's lines). The
    file is created mode 0o666 minus the umask, like a plain open(). A FIFO, device or socket at ``path``
    raises WriteError rather than blocking or writing into it."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with _reported_as_write_error(Path(path)):  # e.g. ENOSPC: one line, not a traceback
        _append(path, data)


_APPEND_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | NONBLOCK | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)


def _open_append(path: str | os.PathLike) -> int:
    """An O_APPEND descriptor on the regular file ``path`` (created mode 0o666 minus the umask). A FIFO or a
    device there raises WriteError: opening a FIFO to write blocks until a reader comes (O_NONBLOCK and the
    fstat check catch one swapped in after the first check)."""
    check_output_target(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, _APPEND_FLAGS, 0o666)
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise WriteError(
                f"cannot write {path}: it is {kind}, not a regular file; name a regular file or a new path"
            )
        if NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: str | os.PathLike, encoding: str = "utf-8") -> IO:
    """A text handle appending to the regular file ``path`` (see :func:`append_line` for the refusals)."""
    with _reported_as_write_error(Path(path)):
        return os.fdopen(_open_append(path), "a", encoding=encoding)


def _append(path: str | os.PathLike, data: bytes) -> None:
    fd = _open_append(path)
    try:
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or a signal: finish the line rather than leave half
            os.write(fd, data[written:])
    finally:
        os.close(fd)
