"""status.json in TAO's format: one JSON object per line (date, time, status, verbosity, message, kpi, ...).

TAO's status logger writes "STARTED" when a task starts, "RUNNING" lines during it (per epoch in training:
epoch, step, max_epoch, max_step, time_per_epoch, time_per_step, eta), and at the end a RUNNING
"<Task> finished successfully." line or a "FAILURE" one; once KPIs are set they travel on every later
line. Lines are appended (a resumed run continues the same file). Only the global-zero process writes.
"""

import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from reid_tao.engine.metric_names import VALIDATION_METRICS, kpi_names
from reid_tao.errors import WriteError
from reid_tao.io.atomic import append_line

log = logging.getLogger(__name__)

STARTED, RUNNING, SUCCESS, FAILURE = "STARTED", "RUNNING", "SUCCESS", "FAILURE"
STATUS_FILE = "status.json"


class StatusFile:
    """Appends TAO status lines to `path`; `kpi` (once set) is added to every later line, as in TAO."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.kpi: dict[str, float] = {}

    def write(self, status: str = RUNNING, message: str | None = None, verbosity: str = "INFO", **data: Any) -> None:
        if not self.enabled:
            return
        now = datetime.now()
        # TAO's spelling: m/d/yyyy and h:m:s without zero padding
        line = dict(
            data,
            date=f"{now.month}/{now.day}/{now.year}",
            time=f"{now.hour}:{now.minute}:{now.second}",
            status=status,
            verbosity=verbosity,
        )
        if message:
            line["message"] = message
        if self.kpi:
            line["kpi"] = dict(self.kpi)
        try:
            append_line(self.path, json.dumps(line))
        except WriteError as error:
            if status != FAILURE:
                raise
            log.warning("%s", error)  # the failure being reported is the error the user needs to see


def kpi_from(metrics: dict[str, Any]) -> dict[str, float]:
    """The TAO KPIs among Lightning's logged metrics, as plain floats."""
    return {kpi: float(metrics[name]) for name, kpi in kpi_names().items() if name in metrics}


class StatusCallback(pl.Callback):
    """One RUNNING line per training epoch, with timing, eta and the epoch's KPIs (validation ones when
    validation ran this epoch)."""

    def __init__(self, status: StatusFile):
        self.status = status

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.status.write(RUNNING, "Starting Training Loop.")
        self.on_train_epoch_start(trainer, module)  # a run resumed mid-epoch skips on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_first_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._epoch_start
        steps = max(trainer.global_step - self._epoch_first_step, 1)
        remaining = trainer.max_epochs - 1 - trainer.current_epoch
        validated = trainer.current_epoch + 1 == getattr(module, "_last_val_epoch", 0)
        metrics = {
            name: value
            for name, value in trainer.callback_metrics.items()
            if validated or name not in VALIDATION_METRICS
        }
        self.status.kpi = kpi_from(metrics)
        # which ranking the validation kpi come from (re_ranking.re_ranking), on the lines that carry them
        ranking = {"validation_ranking": getattr(module, "val_ranking", "plain")} if validated else {}
        self.status.write(
            RUNNING,
            "Training loop in progress",
            **ranking,
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            max_epoch=trainer.max_epochs - 1,
            max_step=trainer.max_epochs * trainer.num_training_batches,
            time_per_epoch=str(timedelta(seconds=seconds)),
            time_per_step=str(timedelta(seconds=seconds / steps)),
            eta=str(timedelta(seconds=remaining * seconds)),
        )

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.status.write(RUNNING, "Training loop complete.")
