"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback; and the
helpers that turn any error or text into that one line (:func:`first_line`, :func:`last_line`,
:func:`error_line`)."""

from __future__ import annotations


class ReidError(Exception):
    """Something the user can fix (a spec field, a folder, a file). Message: what, where, what to do."""

    exit_code = 2


class ConfigError(ReidError):
    """A spec file or override is invalid."""


class DataError(ReidError):
    """A dataset folder, image or checkpoint is missing, empty or unreadable."""


class WriteError(ReidError):
    """An output file could not be written (disk full, file-size limit, read-only or forbidden folder).

    The previous version of the file is untouched and no temporary file is left behind."""

    exit_code = 1


class Preempted(ReidError):
    """Training stopped on a signal after writing a checkpoint to resume from; exit code 128 + signal number,
    as if the signal had ended the process (what SLURM, Kubernetes and shells expect)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


class Stopped(ReidError):
    """A task other than training's step loop stopped on SIGTERM (its outputs are written atomically, so no
    partial or temporary file is left); exit code 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


# ----------------------------------------------------------------------------------------------
# one-line messages


def _lines(error_or_text: BaseException | str) -> list[str]:
    return [line.strip() for line in str(error_or_text).splitlines() if line.strip()]


def _pick(error_or_text: BaseException | str, index: int, limit: int | None) -> str:
    lines = _lines(error_or_text)
    if lines:
        text = lines[index]
    else:
        text = "" if isinstance(error_or_text, str) else type(error_or_text).__name__
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def first_line(error_or_text: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of ``str(error_or_text)``, stripped. An exception with an empty
    message gives its type name (a string gives ""). With ``limit``, a longer line is cut to ``limit``
    characters ending in "..."."""
    return _pick(error_or_text, 0, limit)


def error_line(error: BaseException) -> str:
    """An error's one-line message: the last line (errors raised in DataLoader workers come back wrapped with
    the worker's traceback), without a leading "module.Class: " that such a wrapper adds."""
    last = last_line(error)
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def last_line(error_or_text: BaseException | str, limit: int | None = None) -> str:
    """Like :func:`first_line` but the last non-empty line (e.g. the exception line at the end of an
    error re-raised with a DataLoader worker's traceback)."""
    return _pick(error_or_text, -1, limit)
