"""Callbacks: a one-line summary per epoch, a progress bar that reads the loss only when it redraws, and a
count of the steps a run trained."""

import logging
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

log = logging.getLogger("reid_tao.train")


def console_is_terminal() -> bool:
    """Progress bars only on a terminal: in a log file (CI, SLURM, a pipe) their carriage returns and escape
    codes are noise, and the per-epoch summary line says what matters."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def throughput(images: int, seconds: float) -> str:
    """Images per second, with the digits that matter; seconds per image below one image per second."""
    rate = images / max(seconds, 1e-9)
    if rate >= 10:
        return f"{rate:.0f} img/s"
    if rate >= 1:
        return f"{rate:.1f} img/s"
    return f"{seconds / max(images, 1):.1f} s/img"


class EpochSummary(pl.Callback):
    """Prints epoch, loss, ID accuracy, lr, throughput (and validation metrics when they ran)."""

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()  # a run resumed mid-epoch skips on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._start
        loaders = trainer.train_dataloader  # a dict of loaders with adaptation's source stream: all images count
        per_step = sum(loader.batch_size for loader in (loaders.values() if isinstance(loaders, dict) else [loaders]))
        images = trainer.num_training_batches * per_step * trainer.world_size
        metrics = trainer.callback_metrics
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        # TAO's numbering, as the bar, model_epoch_NNN.pth and status.json (epoch / max_epoch): from 0
        parts = [f"epoch {trainer.current_epoch}/{trainer.max_epochs - 1}"]
        if "train_loss" in metrics:
            parts.append(f"loss {float(metrics['train_loss']):.4f}")
        if "train_acc_1" in metrics:
            parts.append(f"id_acc {100 * float(metrics['train_acc_1']):.1f}%")
        if "clusters" in metrics:  # domain adaptation: the pseudo labels of this epoch
            parts.append(
                f"clusters {int(metrics['clusters'])} outliers {int(metrics['outliers'])} "
                f"used {int(metrics['images_used'])}"
            )
        parts += [f"lr {lr:.2e}", throughput(images, seconds)]
        if "mAP" in metrics and trainer.current_epoch + 1 == getattr(module, "_last_val_epoch", 0):
            parts.append(
                f"val ({getattr(module, 'val_ranking', 'plain')}) mAP {100 * float(metrics['mAP']):.1f}% "
                f"R1 {100 * float(metrics['cmc_rank_1']):.1f}%"
            )
        line = "  ".join(parts)
        bar = trainer.progress_bar_callback
        if bar is not None and bar.is_enabled:
            bar.print(line)  # on its own line, not inside the progress bar
            log.info(line, extra={"printed": True})  # for the log file only
        else:
            log.info(line)


class StepLossBar(TQDMProgressBar):
    """Shows the mean step loss since the last redraw, read from the module when the bar refreshes (every
    ``refresh_rate`` steps): one device-to-host read per refresh instead of one per step."""

    def get_metrics(self, trainer: pl.Trainer, module: pl.LightningModule):
        metrics = super().get_metrics(trainer, module)
        take = getattr(module, "take_running_loss", None)
        loss = take() if take is not None else None
        if loss is not None:
            metrics["loss"] = f"{loss:.4f}"
        return metrics


class StepCounter(pl.Callback):
    """The training steps this process ran (0 when a resumed run had no epoch left to train)."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps += 1
