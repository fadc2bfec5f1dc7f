"""Preemption-safe training: a stop signal ends training after the current step, with a checkpoint that
resumes at exactly the next step.

SIGTERM (what SLURM, Kubernetes and spot instances send before killing), SIGINT (Ctrl-C) and SIGUSR1 (the
conventional SLURM requeue signal, ``#SBATCH --signal=B:SIGUSR1@90``) only set a flag; after the step that
is running, :class:`PreemptionCheckpoint` writes reid_model_latest.pth through Lightning (model, optimisers
including the center-loss one, schedulers, loss scaler, loops) plus what Lightning leaves out: the position
inside the epoch and every RNG state. Then it raises :class:`~reid_tao.errors.Preempted`, the one place a
preemption leaves training (exit code 128 + signal number). Re-running the same command resumes from that
step: the sampler skips the batches already trained on (the epoch's batch plan and every augmentation seed
are functions of seed, epoch, rank and position) and the RNGs are restored before the next step. A second
signal stops at once, without a checkpoint.
"""

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from reid_tao.errors import Preempted

log = logging.getLogger("reid_tao.train")

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
# With several processes a stop signal is acted on after at most this many steps (and at an epoch's end):
# each check is an all-reduce plus a device-to-host read, a sync that every step would otherwise pay. At
# ResNet50 speeds 10 steps are a few seconds, well inside SLURM's or Kubernetes' grace period.
CHECK_EVERY = 10
RESUME_KEY = "reid_tao_resume"  # checkpoint entry: {"epoch", "batch" (batches done in that epoch), "rng"}


# ------------------------------------------------------------------------------------------------ RNG states
def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as plain data (tensors, ints, tuples): safe-loadable."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------------------------------------ callback
class PreemptionCheckpoint(pl.Callback):
    """Stop after the current step on a stop signal, writing ``path`` to resume exactly there.

    Install the signal handlers around ``Trainer.fit`` with :meth:`catching_signals` (Lightning's own SIGTERM
    handler, registered inside fit, chains to them). The data module must offer ``start_epoch_at(epoch,
    batches)`` (:class:`~reid_tao.data.datamodule.ReidDataModule` does).
    """

    def __init__(self, path: Path, signals=STOP_SIGNALS, check_every: int = CHECK_EVERY):
        self.path, self.signals, self.check_every = Path(path), tuple(signals), int(check_every)
        self.received: int | None = None
        self._position: dict[str, Any] | None = None  # written into the preemption checkpoint
        self._resume: dict[str, Any] | None = None  # read from the checkpoint training resumes from
        self._epoch_ended = False  # in this run: a stop at an epoch start has that epoch's checkpoint

    # -- signals ------------------------------------------------------------------------------------------
    @contextmanager
    def catching_signals(self) -> Iterator["PreemptionCheckpoint"]:
        """Route the stop signals to this callback for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self.signals}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is not None:  # a second signal: stop now, without a checkpoint of this step
            raise Preempted(
                f"stopped at once by a second {signal.Signals(signum).name}, without writing a "
                f"checkpoint of the running step; run the same command to resume from the last "
                f"checkpoint ({self.path} if it exists)",
                signum,
            )
        self.received = signum  # only a flag: the step that is running finishes first

    def _agreed_signal(self, trainer: pl.Trainer, module: pl.LightningModule, batch_idx: int | None = None) -> int:
        """The signal any process received (all processes must stop at the same step, or DDP hangs). With
        several processes agreeing costs an all-reduce and a device-to-host read, so after a step (batch_idx)
        they agree only every ``check_every`` steps and after an epoch's last batch: the same steps on every
        rank. Without batch_idx (between epochs) they always agree."""
        signum = self.received or 0
        if trainer.world_size > 1:
            done = None if batch_idx is None else batch_idx + 1
            if done is not None and done % self.check_every and done < trainer.num_training_batches:
                return 0
            flag = torch.tensor(signum, device=module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        return signum

    # -- outside a training step -------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler inside fit; it runs a collective inside the handler (DDP
        # deadlock when the whole process group gets the signal) and ends validation or a checkpoint write
        # with a SystemExit of code 0. Ours only set a flag, so they replace it for the rest of fit.
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                signal.signal(signum, self._on_signal)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_ended = True  # the epoch-end checkpoint is written before the next epoch starts

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # a signal during validation or the epoch-end checkpoint write: that checkpoint is the running state
        signum = self._agreed_signal(trainer, module) if self._epoch_ended else 0
        if signum:
            self._stop_after_epoch(trainer, signum)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.received is not None:  # the signal came during the last epoch's validation or checkpoint
            self._stop_after_epoch(trainer, self.received)

    def _stop_after_epoch(self, trainer: pl.Trainer, signum: int) -> None:
        raise Preempted(
            f"preempted by {signal.Signals(signum).name} at the end of epoch {trainer.current_epoch}/"
            f"{trainer.max_epochs} (global step {trainer.global_step}); checkpoint written to "
            f"{self.path}; run the same command to resume",
            signum,
        )

    # -- stopping ---------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        signum = self._agreed_signal(trainer, module, batch_idx)
        if not signum:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            # the epoch's last step: a mid-epoch checkpoint here would resume past the epoch-end work (lr
            # schedule, epoch-end checkpoint); let the epoch end, then stop at the next epoch's start
            self.received = signum
            return
        self._position = {"epoch": trainer.current_epoch, "batch": batch_idx + 1, "rng": rng_states()}
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: it resumes
        name = signal.Signals(signum).name
        raise Preempted(
            f"preempted by {name} in epoch {trainer.current_epoch + 1}/{trainer.max_epochs} after "
            f"batch {batch_idx + 1}/{trainer.num_training_batches} (global step {trainer.global_step}); "
            f"checkpoint written to {self.path}; run the same command to resume",
            signum,
        )

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._position is not None:
            checkpoint[RESUME_KEY] = self._position

    # -- resuming ---------------------------------------------------------------------------------------
    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        position = checkpoint.get(RESUME_KEY)
        if position is None:
            return  # an epoch-end checkpoint: the epoch starts from its first batch, reseeded
        self._resume = position
        # before Lightning builds the training loader: the sampler skips the batches already trained on
        trainer.datamodule.start_epoch_at(position["epoch"], position["batch"])
        log.info("resuming inside epoch %d after batch %d", position["epoch"] + 1, position["batch"])

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._resume is None:
            return
        position, self._resume = self._resume, None
        if (trainer.current_epoch, batch_idx) != (position["epoch"], position["batch"]):
            log.warning(
                "resumed at epoch %d batch %d, expected epoch %d batch %d: the run will not repeat the "
                "interrupted one exactly",
                trainer.current_epoch,
                batch_idx,
                position["epoch"],
                position["batch"],
            )
        set_rng_states(position["rng"])  # the states the interrupted run had before this step
