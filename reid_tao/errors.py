"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


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
