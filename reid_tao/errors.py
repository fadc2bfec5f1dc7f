"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class ReidError(Exception):
    """Something the user can fix (a spec field, a folder, a file). Message: what, where, what to do."""

    exit_code = 2


class ConfigError(ReidError):
    """A spec file or override is invalid."""


class DataError(ReidError):
    """A dataset folder, image or checkpoint is missing, empty or unreadable."""
