"""Spec fields that are accepted but change nothing here, and the warmup rule for runs shorter than the warmup.

TAO's own experiment.yaml carries every field of its schema; a field without an effect here gets one log
line when it is set to a non-default value (never an error), so a TAO file works unchanged.
"""
from typing import List, NamedTuple, Optional

from omegaconf import DictConfig, OmegaConf

from .schema import ExperimentConfig

# field -> why it has no effect here
INERT_FIELDS = {
    "model_name": "reid_tao only trains re-identification models",
    "train.optim.lr_monitor": "the lr follows the epoch schedule (TAO does not read it either)",
    "train.optim.cosine_margin": "it belongs to the margin heads (arcface, cosface, ...), not implemented (TAO bug B4)",
    "train.optim.cosine_scale": "it belongs to the margin heads (arcface, cosface, ...), not implemented (TAO bug B4)",
    "train.optim.trp_l2": "the triplet loss uses the features as they are (TAO does not read it either)",
}
TRT_ENGINE_LINE = ("{task}.trt_engine is not used: reid_tao runs the PyTorch checkpoint; TensorRT engines are built "
                   "from the exported ONNX (reid export) outside reid_tao, e.g. with trtexec")


def _applies(field: str, task: str) -> bool:
    section = field.split(".")[0] if "." in field else None
    return section is None or section == task


def field_notices(config: DictConfig, task: str) -> List[str]:
    """One line per field that is set to a non-default value but has no effect on `task`."""
    defaults = OmegaConf.structured(ExperimentConfig)
    lines = [f"{field}={OmegaConf.select(config, field)!r} has no effect: {reason}"
             for field, reason in INERT_FIELDS.items()
             if _applies(field, task) and OmegaConf.select(config, field) != OmegaConf.select(defaults, field)]
    if task in ("evaluate", "inference") and config[task].trt_engine:
        lines.append(TRT_ENGINE_LINE.format(task=task))
    if task == "train":
        lines += _adaptation_notices(config, defaults)
    return lines


# with adaptation.enable=true: field -> why it has no effect
ADAPTATION_INERT_FIELDS = {
    "model.pretrain_choice": "adaptation.source_checkpoint gives the initial weights",
    "model.pretrained_model_path": "adaptation.source_checkpoint gives the initial weights",
    "model.id_loss_type": "the cluster-memory loss replaces the ID loss",
    "model.id_loss_weight": "the cluster-memory loss replaces the ID loss (adaptation.memory_loss_weight)",
    "model.label_smooth": "the cluster-memory loss replaces the ID loss",
}


def _adaptation_notices(config: DictConfig, defaults: DictConfig) -> List[str]:
    adaptation = config.adaptation
    if adaptation.enable:
        return [f"{field}={OmegaConf.select(config, field)!r} has no effect: {reason}"
                for field, reason in ADAPTATION_INERT_FIELDS.items()
                if OmegaConf.select(config, field) != OmegaConf.select(defaults, field)]
    return [f"adaptation.{name}={adaptation[name]!r} has no effect: adaptation.enable is false"
            for name in adaptation if name != "enable" and adaptation[name] != defaults.adaptation[name]]


class Warmup(NamedTuple):
    field: str  # the spec field that sets the warmup length for the chosen method
    requested: int
    used: int


def warmup_length(config: DictConfig) -> Warmup:
    """The warmup in epochs: as set, or, when it is longer than the run (TAO's Swin sample warms up for 20 of 5
    epochs, so its lr never reaches base_lr), half the run, so the schedule still reaches base_lr and, for
    cosine, decays. Cosine also needs an epoch after the warmup; a linear warmup as long as the run is kept,
    so a short run extended later (raising train.num_epochs and resuming) follows the same schedule."""
    optim, num_epochs = config.train.optim, config.train.num_epochs
    cosine = optim.warmup_method == "cosine"
    field = "warmup_epochs" if cosine else "warmup_iters"
    requested = int(optim[field])
    fits = requested < num_epochs if cosine else requested <= num_epochs
    used = requested if fits else num_epochs // 2
    return Warmup(f"train.optim.{field}", requested, used)


def warmup_warning(config: DictConfig) -> Optional[str]:
    warmup = warmup_length(config)
    if warmup.used == warmup.requested:
        return None
    return (f"{warmup.field}={warmup.requested} does not fit in train.num_epochs={config.train.num_epochs}: "
            f"warming up for {warmup.used} epoch(s) instead, so the lr reaches train.optim.base_lr")
