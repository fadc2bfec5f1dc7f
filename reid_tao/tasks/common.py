"""What every task does: results folder, experiment.yaml, logging to the console and <task>.log, and
status.json around the task's work as TAO writes it (STARTED "Starting ReIdentification <task>.", then a
RUNNING "<Task> finished successfully." line, or FAILURE with the one-line error)."""

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from reid_tao.config.loader import task_results_dir
from reid_tao.config.notices import field_notices
from reid_tao.engine.status import FAILURE, RUNNING, STARTED, STATUS_FILE, StatusFile
from reid_tao.errors import ConfigError, ReidError, error_line
from reid_tao.io.atomic import atomic_write_text, open_append

log = logging.getLogger("reid_tao")
TAO_MODEL_NAME = "ReIdentification"  # in TAO's status.json start line


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (it may be replaced after setup, e.g. by pytest).
    Records marked `printed` were already shown on the console (through the progress bar)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "printed", False) and super().filter(record)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def is_global_zero() -> bool:
    """Rank from the launcher's environment (torchrun, SLURM, Lightning's DDP children)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def setup_logging() -> None:
    root = logging.getLogger("reid_tao")
    if not root.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    # Only the global-zero process of a multi-process run talks (warnings and errors from all).
    root.setLevel(logging.INFO if is_global_zero() else logging.WARNING)


# Lightning's info lines that say nothing to a reid_tao user (the devices line of build_trainer says what runs).
LIGHTNING_CHATTER = (
    "litlogger",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "was configured so",
    "`Trainer.fit` stopped: `max_epochs=",
    "`Trainer.fit` stopped: `max_steps=",
)
# Lightning's warnings about cases reid_tao handles itself.
HANDLED_WARNINGS = (
    ".*exists and is not empty.*",  # re-runs resume in place
    ".*is smaller than the logging interval.*",
    ".*LeafSpec.*is deprecated.*",
    ".*predict returned None.*",  # extract(): the processes other than global zero return nothing on purpose
    # the sampler position is restored on resume (engine.preemption, data.samplers): mid-epoch resume is exact
    ".*resuming from a checkpoint that ended before the epoch ended.*",
    # step checkpoints hold the state after the step, which is what a resume needs
    ".*ModelCheckpoint with manual optimization.*",
)


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(phrase in message for phrase in LIGHTNING_CHATTER)


def quiet_lightning() -> None:
    """Silence messages that are expected here and say nothing to a reid_tao user."""
    for pattern in HANDLED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropChatter) for existing in logger.filters):
            logger.addFilter(_DropChatter())


class _TaskLogFile(logging.FileHandler):
    """results_dir/<task>/<task>.log: the console log of the task, appended to by every run."""

    def _open(self):  # a FIFO or device there: one line, not a wait for a reader or a write into the device
        return open_append(self.baseFilename, encoding=self.encoding or "utf-8")


def _attach_log_file(path: Path) -> _TaskLogFile:
    root = logging.getLogger("reid_tao")
    handler = _TaskLogFile(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    return handler


def reported(task: str) -> Callable:
    """Decorator for a task's run(config, status, **options): status.json and <task>.log in its results folder.

    Every failure ends up here once: a ReidError (or any unexpected exception, or an interrupt) writes a
    FAILURE line with its one-line message and is raised on unchanged, for the CLI to report."""

    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def wrapper(config: DictConfig, **options):
            setup_logging()
            results = task_results_dir(config, task)
            zero = is_global_zero()
            if zero:
                make_results_folder(results, task)
            with results_lock(results, task, enabled=zero):
                return _run_reported(run, config, task, results, zero, options)

        return wrapper

    return decorate


def make_results_folder(results: Path, task: str) -> None:
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. results_dir is an existing file
        reason = (
            "a file is in the way"
            if isinstance(error, (FileExistsError, NotADirectoryError))
            else (error.strerror or str(error))
        )
        raise ConfigError(
            f"cannot create the results folder {results} ({reason}); set results_dir (or "
            f"{task}.results_dir) to a folder"
        ) from None


@contextmanager
def results_lock(results: Path, task: str, enabled: bool = True) -> Iterator[None]:
    """One run of a task per results folder at a time (two would interleave status.json, metrics.csv and the
    checkpoints): an OS file lock (filelock; released when the process ends, even by SIGKILL), and the
    holder's pid beside it for the message."""
    if not enabled:
        yield
        return
    lock = FileLock(results / f".{task}.lock", timeout=0)
    holder = results / f".{task}.pid"
    try:
        lock.acquire()
    except Timeout:
        try:
            pid = holder.read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise ConfigError(
            f"another `reid {task}` (pid {pid}) is running in {results}; wait for it to finish, "
            "or use another results_dir"
        ) from None
    try:
        atomic_write_text(holder, str(os.getpid()))
        yield
    finally:
        lock.release()


def _run_reported(run: Callable, config: DictConfig, task: str, results: Path, zero: bool, options):
    handler = _attach_log_file(results / f"{task}.log") if zero else None
    status = StatusFile(results / STATUS_FILE, enabled=zero)
    status.write(STARTED, f"Starting {TAO_MODEL_NAME} {task}.")
    try:
        outcome = run(config, status, **options)
    except KeyboardInterrupt:
        status.write(FAILURE, f"{task} interrupted", verbosity="ERROR")
        raise
    except ReidError as error:
        status.write(FAILURE, error_line(error), verbosity="ERROR")
        raise
    except Exception as error:
        status.write(FAILURE, f"{type(error).__name__}: {error_line(error)}", verbosity="ERROR")
        raise
    finally:
        if handler is not None:
            logging.getLogger("reid_tao").removeHandler(handler)
            handler.close()
    # TAO ends a task that worked with a RUNNING line (no SUCCESS status): scripts wait for this message
    status.write(RUNNING, f"{task.capitalize()} finished successfully.")
    return outcome


def prepare_task(config: DictConfig, task: str) -> Path:
    """Create results_dir/<task> (or <task>.results_dir) and write the resolved experiment.yaml there."""
    setup_logging()
    quiet_lightning()
    results = task_results_dir(config, task)
    results.mkdir(parents=True, exist_ok=True)
    write_experiment(config, task)
    if config.encryption_key:
        log.info("encryption_key is set: reid_tao writes unencrypted checkpoints")
    for line in field_notices(config, task):
        log.info(line)
    return results


def write_experiment(config: DictConfig, task: str) -> None:
    """<task>/experiment.yaml: the resolved config the task runs (written by the global-zero process)."""
    if is_global_zero():
        atomic_write_text(task_results_dir(config, task) / "experiment.yaml", OmegaConf.to_yaml(config))
