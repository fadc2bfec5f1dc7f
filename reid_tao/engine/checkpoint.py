"""Checkpoints: atomic (and background) writes, TAO file names; Lightning's resume reads through
:func:`reid_tao.io.checkpoint_file.read_checkpoint_file`."""

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import ModelCheckpoint

from reid_tao.io.atomic import atomic_torch_save
from reid_tao.io.checkpoint_file import read_checkpoint_file

log = logging.getLogger(__name__)

LATEST_NAME = "reid_model_latest"
EPOCH_NAME = "model_epoch_{epoch:03d}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic local writes (Lightning's default writes in place) and safe reads:
    Lightning's own resume load (``Trainer.fit(ckpt_path=...)``) goes through the one reader too
    (:func:`~reid_tao.io.checkpoint_file.read_checkpoint_file`: never runs code from the file).

    field: the spec field named when a checkpoint cannot be loaded safely; trust: full unpickling allowed
    (``model.trust_weights_file``)."""

    def __init__(self, field: str = "train.resume_training_checkpoint_path", trust: bool = False):
        super().__init__()
        self.field, self.trust = field, trust

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Loaded onto the CPU; Lightning moves the states to the training device when it restores them.
        return read_checkpoint_file(str(path), self.field, self.trust).contents


class BackgroundCheckpointIO(AtomicCheckpointIO):
    """Atomic writes in a background thread, so training does not wait for the disk at each epoch end
    (reid_model_latest.pth holds ResNet50, its Adam state and the centers: docs/benchmarks.md#epoch-end-checkpoint).

    The caller's thread takes a host snapshot first (a device-to-host copy of every tensor, new containers),
    so the next steps cannot change what is written. One write is in flight at a time: the next save,
    a removal (best-k) and teardown (the end of fit, also after an exception such as a preemption) wait for
    it and raise its error there. Memory: one checkpoint-sized host copy while a write runs."""

    def __init__(self, field: str = "train.resume_training_checkpoint_path", trust: bool = False):
        super().__init__(field, trust)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        self.wait()
        snapshot = apply_to_collection(checkpoint, torch.Tensor, _host_copy)
        self._writer = threading.Thread(target=self._write, args=(snapshot, Path(path)), name="checkpoint-writer")
        self._writer.start()

    def _write(self, snapshot: dict[str, Any], path: Path) -> None:
        try:
            atomic_torch_save(snapshot, path)
        except BaseException as error:  # raised in the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def remove_checkpoint(self, path) -> None:
        self.wait()  # never remove a file that is still being written (or race its rename)
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.wait()
        super().teardown()


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


class ReidCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing TAO's `.pth` names; `role` keeps the state keys of two instances apart."""

    FILE_EXTENSION = ".pth"

    def __init__(self, role: str, **kwargs):
        self.role = role
        super().__init__(**kwargs)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(role=self.role, every_n_epochs=self._every_n_epochs)


STEP_NAME = "model_step_{step:06d}"
INTERVAL_UNITS = ("epoch", "step")


def checkpoint_callbacks(
    dirpath: Path, interval: int, unit: str = "epoch", periodic: bool = True, best: dict[str, Any] | None = None
):
    """reid_model_latest.pth every epoch (for resume); with `periodic`, model_epoch_{epoch:03d}.pth every
    `interval` epochs or model_step_{step:06d}.pth every `interval` steps (`unit`); with `best` (monitor, mode,
    save_top_k, filename, dirpath, auto_insert_metric_name, save_on_train_epoch_end: False for a validation
    metric), the best-k files by a logged metric.

    Only the latest and the step files (the resume points inside long epochs) keep the optimiser state: the epoch
    and best-k files are for evaluate, export and fine-tuning, and the optimiser state (Adam: two values per
    weight) would triple their size."""
    if unit not in INTERVAL_UNITS:
        raise ValueError(f"unit must be one of {', '.join(INTERVAL_UNITS)}, got {unit!r}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    callbacks = [
        ReidCheckpoint(
            "latest",
            dirpath=dirpath,
            filename=LATEST_NAME,
            every_n_epochs=1,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
    ]
    if periodic and unit == "epoch":
        callbacks.append(
            ReidCheckpoint(
                "epoch",
                dirpath=dirpath,
                filename=EPOCH_NAME,
                auto_insert_metric_name=False,
                every_n_epochs=interval,
                save_top_k=-1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
                save_weights_only=True,
            )
        )
    elif periodic:
        callbacks.append(
            ReidCheckpoint(
                "step",
                dirpath=dirpath,
                filename=STEP_NAME,
                auto_insert_metric_name=False,
                every_n_train_steps=interval,
                save_top_k=-1,
                enable_version_counter=False,
            )
        )
    if best is not None:
        callbacks.append(
            ReidCheckpoint(
                "best",
                **{**best, "dirpath": best.get("dirpath") or dirpath},
                enable_version_counter=False,
                save_weights_only=True,
            )
        )
    return callbacks
