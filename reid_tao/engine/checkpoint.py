"""Checkpoints: atomic writes, TAO file names, and reading a self-describing checkpoint safely."""
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ..errors import DataError
from ..io import atomic_torch_save, first_line

log = logging.getLogger(__name__)

LATEST_NAME = "reid_model_latest"
EPOCH_NAME = "model_epoch_{epoch:03d}"
MODEL_PREFIX = "model."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic local writes (Lightning's default writes in place)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))


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


def checkpoint_callbacks(dirpath: Path, interval: int, unit: str = "epoch", periodic: bool = True,
                         best: Optional[Dict[str, Any]] = None):
    """reid_model_latest.pth every epoch (for resume); with `periodic`, model_epoch_{epoch:03d}.pth every
    `interval` epochs or model_step_{step:06d}.pth every `interval` steps (`unit`); with `best` (monitor, mode,
    save_top_k, filename, dirpath, auto_insert_metric_name, save_on_train_epoch_end: False for a validation
    metric), the best-k files by a logged metric."""
    if unit not in INTERVAL_UNITS:
        raise ValueError(f"unit must be one of {', '.join(INTERVAL_UNITS)}, got {unit!r}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    callbacks = [ReidCheckpoint("latest", dirpath=dirpath, filename=LATEST_NAME, every_n_epochs=1, save_top_k=1,
                                save_on_train_epoch_end=True, enable_version_counter=False)]
    if periodic and unit == "epoch":
        callbacks.append(ReidCheckpoint("epoch", dirpath=dirpath, filename=EPOCH_NAME, auto_insert_metric_name=False,
                                        every_n_epochs=interval, save_top_k=-1, save_on_train_epoch_end=True,
                                        enable_version_counter=False))
    elif periodic:
        callbacks.append(ReidCheckpoint("step", dirpath=dirpath, filename=STEP_NAME, auto_insert_metric_name=False,
                                        every_n_train_steps=interval, save_top_k=-1, enable_version_counter=False))
    if best is not None:
        callbacks.append(ReidCheckpoint("best", **{**best, "dirpath": best.get("dirpath") or dirpath},
                                        enable_version_counter=False))
    return callbacks


def read_checkpoint(path: str, field: str) -> Dict[str, Any]:
    """A reid_tao checkpoint as a dict; a clear error when missing, unreadable or not ours."""
    if not path:
        raise DataError(f"{field} is not set; pass {field}=/path/to/reid_model_latest.pth")
    if not Path(path).is_file():
        raise DataError(f"{field}: checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{field}: cannot read checkpoint {path} ({first_line(error, limit=200)})") from None
    if not isinstance(checkpoint, dict) or "reid_tao" not in checkpoint or "state_dict" not in checkpoint:
        raise DataError(f"{field}: {path} is not a reid_tao training checkpoint (no model metadata inside); "
                        "use a file written by `reid train`")
    return checkpoint


def model_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
