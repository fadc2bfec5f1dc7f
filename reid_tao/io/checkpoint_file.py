"""The one reader of weights and checkpoint files (imports only ``errors`` and :mod:`.safe_load`).

Every file that holds a model's weights, whichever field names it (``model.pretrained_model_path``,
``train.resume_training_checkpoint_path``, ``evaluate.checkpoint``, ``adaptation.source_checkpoint``, ...), is
opened by :func:`read_checkpoint_file`, and its callers use the :class:`CheckpointFile` it returns instead of
parsing the loaded object again: what kind of file it is (:data:`KINDS`), every tensor with the wrappers and
``module.`` prefixes peeled off, the network's own state dict of a Lightning checkpoint, and what a checkpoint
stores besides (reid_tao's metadata, TAO's hyper-parameters, the optimiser state), read as data.

``.safetensors`` files hold tensors only; every other file goes through
:func:`~reid_tao.io.safe_load.safe_torch_load`, so no code from the file runs unless ``model.trust_weights_file``
allows it. A missing, unreadable or corrupt file raises one DataError line naming the field.

torch and safetensors are imported inside the helpers that need them, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reid_tao.errors import DataError, ReidError, first_line
from reid_tao.io.safe_load import safe_torch_load

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckpointFile",
    "read_checkpoint_file",
    "flatten_state_dict",
    "KINDS",
    "REID_TAO",
    "TAO",
    "STATE_DICT",
    "SAFETENSORS",
    "MODEL_PREFIX",
    "TAO_BACKBONE_PREFIX",
    "WRAPPER_KEYS",
]

REID_TAO, TAO, STATE_DICT, SAFETENSORS = "reid_tao", "tao", "state_dict", "safetensors"
KINDS = {
    REID_TAO: "a Lightning checkpoint written by `reid train` (reid_tao metadata inside)",
    TAO: "a Lightning checkpoint written by TAO ReIdentificationNet (its network under model.base.*)",
    STATE_DICT: "any other torch.save file: a plain or wrapped state dict (torchvision, timm, Microsoft Swin), "
    "another Lightning checkpoint",
    SAFETENSORS: "a .safetensors file (tensors only)",
}

MODEL_PREFIX = "model."  # a LightningModule's network: reid_tao's and TAO's modules keep it in .model
TAO_BACKBONE_PREFIX = "model.base."
WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")  # peeled off, also nested
WEIGHT_FILES = ".pth, .pt, .pth.tar, .ckpt or .safetensors"


@dataclass(frozen=True)
class CheckpointFile:
    """A weights or checkpoint file as read by :func:`read_checkpoint_file`."""

    path: str
    field: str  # the spec field that named it (error lines start with it)
    kind: str  # one of KINDS
    contents: dict[str, Any]  # the loaded dict as is (Lightning restores a resumed run from it)
    tensors: dict[str, torch.Tensor]  # every tensor, wrappers peeled, leading `module.` removed

    @property
    def source(self) -> str:
        """ "<field>: <path>", the start of an error line about this file."""
        return f"{self.field}: {self.path}"

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        """The network's state dict of a Lightning checkpoint (reid_tao's Baseline, TAO's network): the tensors
        under ``model.``, that prefix removed; {} when there are none."""
        return {
            name[len(MODEL_PREFIX) :]: value for name, value in self.tensors.items() if name.startswith(MODEL_PREFIX)
        }

    @property
    def metadata(self) -> Any:
        """What ``reid train`` stores beside the weights (config, num_classes, preprocessing), unchecked: a
        crafted file may hold anything here."""
        return self.contents.get("reid_tao")

    @property
    def hyper_parameters(self) -> Any:
        """Lightning's ``save_hyperparameters`` record (TAO keeps its experiment spec there), unchecked."""
        return self.contents.get("hyper_parameters")

    @property
    def holds_optimiser_state(self) -> bool:
        """Whether training can resume from it (a weights-only file holds the model and its metadata only)."""
        return "optimizer_states" in self.contents

    @property
    def encrypted(self) -> bool:
        """TAO encrypted its weights (TAO's encryption key decrypts them)."""
        return bool(self.contents.get("state_dict_encrypted"))

    def require_reid_tao(self) -> CheckpointFile:
        """Itself when written by ``reid train``; else one DataError line."""
        if self.kind != REID_TAO:
            raise DataError(
                f"{self.source} is not a reid_tao training checkpoint (no model metadata inside); "
                "use a file written by `reid train`"
            )
        return self


def read_checkpoint_file(path: str | Path, field: str, trust: bool = False, weights: bool = False) -> CheckpointFile:
    """Read a weights or checkpoint file (``.pth``, ``.pt``, ``.pth.tar``, ``.ckpt`` via
    :func:`~reid_tao.io.safe_load.safe_torch_load`; ``.safetensors``) without running code from it (unless
    ``trust``: ``model.trust_weights_file``); one DataError line naming ``field`` when it is missing,
    unreadable, corrupt or in need of code.

    ``weights``: the file is pretrained weights rather than a checkpoint (``model.pretrained_model_path`` of
    ImageNet weights): ``~`` is expanded, the error lines ask for a weights file, and any file with tensors is
    accepted (a saved module too, when trusted), none without.
    """
    if not path and not weights:
        raise DataError(f"{field} is not set; pass {field}=/path/to/reid_model_latest.pth")
    file = Path(path).expanduser() if weights else Path(path)
    if not file.is_file():
        raise DataError(
            f"{field}: file not found: {file}; set it to an existing weights file ({WEIGHT_FILES})"
            if weights
            else f"{field}: checkpoint {path} does not exist"
        )
    shown = str(file) if weights else path
    safetensors = file.name.endswith(".safetensors")
    try:
        loaded = _load_safetensors(file) if safetensors else safe_torch_load(file, field, trust=trust)
    except ReidError:
        raise
    except Exception as error:  # corrupt, truncated or not a weights file at all
        raise DataError(
            f"{field}: cannot read {shown} as a PyTorch or safetensors weights file ({_short_reason(error)})"
            if weights
            else f"{field}: cannot read {shown}: it is not a PyTorch checkpoint, or a corrupt one "
            f"({first_line(error, limit=200)})"
        ) from None
    if not weights and not isinstance(loaded, dict):
        raise DataError(f"{field}: {shown} is not a checkpoint (a {type(loaded).__name__}, not a dict)")
    tensors = flatten_state_dict(loaded)  # weights: also of a whole module saved by torch.save(model) (trusted)
    if weights and not tensors:
        raise DataError(f"{field}: {shown} holds no tensors; expected a model state dict or checkpoint")
    contents = loaded if isinstance(loaded, dict) else {}
    return CheckpointFile(str(shown), field, SAFETENSORS if safetensors else _kind(contents), contents, tensors)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _kind(contents: Mapping[str, Any]) -> str:
    state = contents.get("state_dict")
    if not isinstance(state, dict):
        return STATE_DICT
    if "reid_tao" in contents:
        return REID_TAO
    if any(isinstance(key, str) and key.startswith(TAO_BACKBONE_PREFIX) for key in state):
        return TAO
    return STATE_DICT


def flatten_state_dict(raw: Any) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weights object: checkpoint wrappers (:data:`WRAPPER_KEYS`, also nested, and
    modules) peeled off, DataParallel's leading ``module.`` removed from the names (a name that is not text is
    skipped); {} when it has none."""
    import torch
    from torch import nn

    while True:
        if isinstance(raw, nn.Module):
            raw = raw.state_dict()
        if not isinstance(raw, Mapping):
            return {}
        inner = next(
            (raw[key] for key in WRAPPER_KEYS if key in raw and isinstance(raw[key], (Mapping, nn.Module))), None
        )
        if inner is None:
            break
        raw = inner
    flat = {}
    for name, value in raw.items():
        if isinstance(name, str) and isinstance(value, torch.Tensor):
            while name.startswith("module."):
                name = name[len("module.") :]
            flat[name] = value
    return flat


def _short_reason(error: BaseException) -> str:
    text = first_line(str(error))
    return first_line(f"{type(error).__name__}: {text}" if text else type(error).__name__, limit=160)
