"""Checkpoints: atomic writes, TAO file names, and reading a self-describing checkpoint safely."""
import logging
from pathlib import Path
from typing import Any, Dict

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ..errors import DataError, ReidError
from ..io import atomic_torch_save, first_line, safe_torch_load

log = logging.getLogger(__name__)

LATEST_NAME = "reid_model_latest"
EPOCH_NAME = "model_epoch_{epoch:03d}"
MODEL_PREFIX = "model."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic local writes (Lightning's default writes in place) and safe reads:
    Lightning's own resume load (``Trainer.fit(ckpt_path=...)``) goes through :func:`safe_torch_load` too.

    field: the spec field named when a checkpoint cannot be loaded safely; trust: full unpickling allowed
    (``model.trust_weights_file``)."""

    def __init__(self, field: str = "train.resume_training_checkpoint_path", trust: bool = False):
        super().__init__()
        self.field, self.trust = field, trust

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> Dict[str, Any]:
        if not Path(path).is_file():
            raise DataError(f"{self.field}: checkpoint {path} does not exist")
        try:
            return safe_torch_load(path, self.field, trust=self.trust,
                                   map_location=map_location or (lambda storage, loc: storage))
        except ReidError:
            raise
        except Exception as error:
            raise DataError(f"{self.field}: cannot read checkpoint {path} ({first_line(error, limit=200)})") from None


class ReidCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing TAO's `.pth` names; `role` keeps the state keys of two instances apart."""

    FILE_EXTENSION = ".pth"

    def __init__(self, role: str, **kwargs):
        self.role = role
        super().__init__(**kwargs)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(role=self.role, every_n_epochs=self._every_n_epochs)


def checkpoint_callbacks(dirpath: Path, interval: int):
    """model_epoch_{epoch:03d}.pth every `interval` epochs, and reid_model_latest.pth every epoch."""
    periodic = ReidCheckpoint("epoch", dirpath=dirpath, filename=EPOCH_NAME, auto_insert_metric_name=False,
                              every_n_epochs=interval, save_top_k=-1, save_on_train_epoch_end=True,
                              enable_version_counter=False)
    latest = ReidCheckpoint("latest", dirpath=dirpath, filename=LATEST_NAME, every_n_epochs=1, save_top_k=1,
                            save_on_train_epoch_end=True, enable_version_counter=False)
    return [periodic, latest]


def read_checkpoint(path: str, field: str, trust: bool = False) -> Dict[str, Any]:
    """A reid_tao checkpoint as a dict; a clear error when missing, unreadable, not ours or in need of code
    from the file (unless ``trust``: ``model.trust_weights_file``)."""
    if not path:
        raise DataError(f"{field} is not set; pass {field}=/path/to/reid_model_latest.pth")
    if not Path(path).is_file():
        raise DataError(f"{field}: checkpoint {path} does not exist")
    try:
        checkpoint = safe_torch_load(path, field, trust=trust)
    except ReidError:
        raise
    except Exception as error:
        raise DataError(f"{field}: cannot read checkpoint {path} ({first_line(error, limit=200)})") from None
    if not isinstance(checkpoint, dict) or "reid_tao" not in checkpoint or "state_dict" not in checkpoint:
        raise DataError(f"{field}: {path} is not a reid_tao training checkpoint (no model metadata inside); "
                        "use a file written by `reid train`")
    return checkpoint


def model_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
