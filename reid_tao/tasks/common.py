"""What every task does first: results folder, experiment.yaml, logging."""
import logging
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config.loader import task_results_dir
from ..io import atomic_write_text


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (it may be replaced after setup, e.g. by pytest)."""

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


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence messages that are expected here and say nothing to a reid_tao user."""
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # re-runs resume in place
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdverts())


def prepare_task(config: DictConfig, task: str, write_config: bool = True) -> Path:
    """Create results_dir/<task> (or <task>.results_dir) and write the resolved experiment.yaml there."""
    setup_logging()
    quiet_lightning()
    results = task_results_dir(config, task)
    results.mkdir(parents=True, exist_ok=True)
    if write_config and is_global_zero():
        atomic_write_text(results / "experiment.yaml", OmegaConf.to_yaml(config))
    if config.encryption_key:
        logging.getLogger("reid_tao").info("encryption_key is set: reid_tao writes unencrypted checkpoints")
    return results
