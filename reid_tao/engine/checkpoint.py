"""Checkpoints: atomic writes, TAO file names, and reading a self-describing checkpoint safely."""
import collections
import logging
import re
import typing
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ..errors import DataError
from ..io import atomic_torch_save, first_line

log = logging.getLogger(__name__)

LATEST_NAME = "reid_model_latest"
EPOCH_NAME = "model_epoch_{epoch:03d}"
MODEL_PREFIX = "model."
TAO_BACKBONE_PREFIX = "model.base."
# Lightning stores hyper-parameters given as OmegaConf containers as such (TAO's spec is one); these plain
# data classes rebuild them. Dataclass-typed ("structured") configs name their own classes and stay refused.
OMEGACONF_SAFE_GLOBALS = (DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode,
                          FloatNode, BooleanNode, typing.Any, typing.List, typing.Dict, collections.defaultdict,
                          dict, list, int, float, str, bool)


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


def checkpoint_callbacks(dirpath: Path, interval: int):
    """model_epoch_{epoch:03d}.pth every `interval` epochs, and reid_model_latest.pth every epoch."""
    periodic = ReidCheckpoint("epoch", dirpath=dirpath, filename=EPOCH_NAME, auto_insert_metric_name=False,
                              every_n_epochs=interval, save_top_k=-1, save_on_train_epoch_end=True,
                              enable_version_counter=False)
    latest = ReidCheckpoint("latest", dirpath=dirpath, filename=LATEST_NAME, every_n_epochs=1, save_top_k=1,
                            save_on_train_epoch_end=True, enable_version_counter=False)
    return [periodic, latest]


def read_checkpoint_file(path: str, field: str) -> Dict[str, Any]:
    """Any checkpoint file as a dict, read without running code (tensors, containers, OmegaConf configs)."""
    if not path:
        raise DataError(f"{field} is not set; pass {field}=/path/to/reid_model_latest.pth")
    if not Path(path).is_file():
        raise DataError(f"{field}: checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(OMEGACONF_SAFE_GLOBALS)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        reason = (f"it holds the Python object {blocked.group(1)}, which is not unpickled for safety" if blocked
                  else first_line(error, limit=200))
        raise DataError(f"{field}: cannot read checkpoint {path} ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise DataError(f"{field}: {path} is not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def read_checkpoint(path: str, field: str) -> Dict[str, Any]:
    """A reid_tao checkpoint as a dict; a clear error when missing, unreadable or not ours."""
    checkpoint = read_checkpoint_file(path, field)
    if "reid_tao" not in checkpoint or "state_dict" not in checkpoint:
        raise DataError(f"{field}: {path} is not a reid_tao training checkpoint (no model metadata inside); "
                        "use a file written by `reid train`")
    return checkpoint


def is_reid_tao_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    return "reid_tao" in checkpoint and isinstance(checkpoint.get("state_dict"), dict)


def is_tao_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    """A Lightning checkpoint written by TAO ReIdentificationNet: its network sits under model.base.*."""
    state = checkpoint.get("state_dict")
    return (not is_reid_tao_checkpoint(checkpoint) and isinstance(state, dict)
            and any(isinstance(key, str) and key.startswith(TAO_BACKBONE_PREFIX) for key in state))


def model_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
