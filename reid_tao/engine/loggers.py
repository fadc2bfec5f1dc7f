"""Experiment loggers: TensorBoard and CSV in fixed folders that a resumed run appends to, and optionally
Weights & Biases."""

import csv
import importlib.util
import logging
import os
from pathlib import Path

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)

# TAO's TensorBoard folder: <results_dir>/train/lightning_logs/version_1 (a fixed version, so a resumed run
# writes into the same folder)
TENSORBOARD_DIR, TENSORBOARD_VERSION, CSV_DIR = "lightning_logs", 1, "logs"


class _AppendingWriter(_ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps it and continues it."""

    def __init__(self, log_dir: str):
        self.metrics, self.metrics_keys = [], []
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._fs.makedirs(log_dir, exist_ok=True)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))
        self.hparams = {}

    def log_hparams(self, params) -> None:  # the resolved spec is in experiment.yaml already
        self.hparams.update(params)


class ResumableCSVLogger(CSVLogger):
    """metrics.csv in <save_dir>/logs/, continued (not replaced) by a resumed run."""

    def __init__(self, save_dir: str):
        super().__init__(save_dir=save_dir, name=CSV_DIR, version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(self.log_dir)
        return self._experiment


def experiment_loggers(results: Path, wandb: dict | None = None) -> list[Logger]:
    """TensorBoard (<results>/lightning_logs/version_1, one folder for every run: a resumed run adds an event file there
    and continues the global step) and CSV (<results>/logs/metrics.csv); with `wandb` (WandbLogger keyword
    arguments) also Weights & Biases when the package is installed."""
    loggers: list[Logger] = [
        TensorBoardLogger(
            save_dir=str(results), name=TENSORBOARD_DIR, version=TENSORBOARD_VERSION, default_hp_metric=False
        ),
        ResumableCSVLogger(str(results)),
    ]
    if wandb is not None:
        if importlib.util.find_spec("wandb") is None:
            log.info(
                "wandb.enable=true but the wandb package is not installed: logging to TensorBoard and CSV "
                "only (pip install wandb, or set wandb.enable=false)"
            )
        else:
            from pytorch_lightning.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(results), **wandb))
    return loggers
