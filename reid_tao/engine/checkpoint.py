"""Checkpoints: atomic writes, TAO file names, and loading a self-describing checkpoint."""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ..errors import DataError

log = logging.getLogger(__name__)

LATEST_NAME = "reid_model_latest"
EPOCH_NAME = "model_epoch_{epoch:03d}"
MODEL_PREFIX = "model."


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside the target, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


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


def read_checkpoint(path: str, field: str) -> Dict[str, Any]:
    """A reid_tao checkpoint as a dict; a clear error when missing, unreadable or not ours."""
    if not path:
        raise DataError(f"{field} is not set; pass {field}=/path/to/reid_model_latest.pth")
    if not Path(path).is_file():
        raise DataError(f"{field}: checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{field}: cannot read checkpoint {path} ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "reid_tao" not in checkpoint or "state_dict" not in checkpoint:
        raise DataError(f"{field}: {path} is not a reid_tao training checkpoint (no model metadata inside); "
                        "use a file written by `reid train`")
    return checkpoint


def model_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def load_model_from_checkpoint(path: str, field: str) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the trained model from the config and num_classes stored in the checkpoint."""
    from omegaconf import OmegaConf

    from ..build import build_model
    from ..config.loader import schema_config

    checkpoint = read_checkpoint(path, field)
    metadata = checkpoint["reid_tao"]
    config = OmegaConf.merge(schema_config(), metadata["config"])
    model = build_model(config, metadata["num_classes"], load_pretrained=False)
    model.load_state_dict(model_state_dict(checkpoint))
    model.eval()
    return model, metadata


def load_self_pretrained(model: torch.nn.Module, path: str) -> None:
    """model.pretrain_choice=self: backbone (and neck, when shapes agree) from a reid_tao checkpoint.

    The classifier is not loaded: it is re-created for the new number of identities.
    """
    state = model_state_dict(read_checkpoint(path, "model.pretrained_model_path"))
    own = model.state_dict()
    transferable = {k: v for k, v in state.items()
                    if not k.startswith("classifier.") and k in own and own[k].shape == v.shape}
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    loaded_backbone = sum(1 for k in backbone_keys if k in transferable)
    if loaded_backbone < 0.9 * len(backbone_keys):
        raise DataError(f"model.pretrained_model_path: {path} matches only {loaded_backbone}/{len(backbone_keys)} "
                        "backbone tensors of this model; was it trained with the same model.backbone?")
    model.load_state_dict(transferable, strict=False)
    log.info("model.pretrain_choice=self: loaded %d/%d backbone tensors and %d head tensors from %s",
             loaded_backbone, len(backbone_keys), len(transferable) - loaded_backbone, path)
