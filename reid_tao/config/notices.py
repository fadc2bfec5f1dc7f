"""Spec fields that are accepted but change nothing here, and the warmup rule for runs shorter than the warmup.

TAO's own experiment.yaml carries every field of its schema; a field without an effect here gets one log
line when it is set to a non-default value (never an error), so a TAO file works unchanged.
"""

from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from reid_tao.config.catalog import find_field, spec_fields
from reid_tao.config.schema import ExperimentConfig


def _applies(field: str, task: str) -> bool:
    section = field.split(".")[0] if "." in field else None
    return section is None or section == task


def field_notices(config: DictConfig, task: str) -> list[str]:
    """One line per field without effect (status "inert" in the schema) that is set to a non-default value
    and belongs to `task` (or to no task), then the fields whose effect depends on another field's value."""
    lines = [
        f"{found.path}={OmegaConf.select(config, found.path)!r} has no effect: {found.meta.why}"
        for found in spec_fields()
        if found.meta.status == "inert"
        and _applies(found.path, task)
        and OmegaConf.select(config, found.path) != found.default
    ]
    lines += [line for applies, line in _conditional_notices(config) if applies == task]
    if task == "train":
        lines += _adaptation_notices(config, OmegaConf.structured(ExperimentConfig))
    return lines


def _conditional_notices(config: DictConfig) -> list[tuple[str, str]]:
    """(task, line) for fields set where the rest of the spec gives them nothing to do."""
    export = config.export
    notices = []
    if export.data_type != "int8" and export.calibration_images != find_field("export.calibration_images").default:
        notices.append(("export", "export.calibration_images has no effect: only export.data_type=int8 calibrates"))
    if export.data_type != "int8" and export.int8_target != find_field("export.int8_target").default:
        notices.append(
            (
                "export",
                f"export.int8_target={export.int8_target!r} has no effect: only export.data_type=int8 has targets",
            )
        )
    if export.data_type == "fp32" and export.calibration_dataset:
        notices.append(
            (
                "export",
                "export.calibration_dataset has no effect with export.data_type=fp32 (it "
                "calibrates int8 and gives fp16 and int8 their parity images)",
            )
        )
    return notices


# with adaptation.enable=true: field -> why it has no effect
ADAPTATION_INERT_FIELDS = {
    "model.pretrain_choice": "adaptation.source_checkpoint gives the initial weights",
    "model.pretrained_model_path": "adaptation.source_checkpoint gives the initial weights",
    "model.id_loss_type": "the cluster-memory loss replaces the ID loss",
    "model.id_loss_weight": "the cluster-memory loss replaces the ID loss (adaptation.memory_loss_weight)",
    "model.label_smooth": "the cluster-memory loss replaces the ID loss",
}


# ... except these, which the labelled source stream (adaptation.source_dataset_dir) trains with
SOURCE_STREAM_FIELDS = ("model.id_loss_weight", "model.label_smooth")


def _adaptation_notices(config: DictConfig, defaults: DictConfig) -> list[str]:
    adaptation = config.adaptation
    if adaptation.enable:
        used = SOURCE_STREAM_FIELDS if adaptation.source_dataset_dir else ()
        return [
            f"{field}={OmegaConf.select(config, field)!r} has no effect: {reason}"
            for field, reason in ADAPTATION_INERT_FIELDS.items()
            if field not in used and OmegaConf.select(config, field) != OmegaConf.select(defaults, field)
        ]
    return [
        f"adaptation.{name}={adaptation[name]!r} has no effect: adaptation.enable is false"
        for name in adaptation
        if name != "enable" and adaptation[name] != defaults.adaptation[name]
    ]


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


def warmup_warning(config: DictConfig) -> str | None:
    warmup = warmup_length(config)
    if warmup.used == warmup.requested:
        return None
    instead = (
        f"warming up for {warmup.used} epoch(s) instead, so the lr reaches train.optim.base_lr"
        if warmup.used
        else "no warmup instead: the run trains at train.optim.base_lr from the first epoch"
    )
    return f"{warmup.field}={warmup.requested} does not fit in train.num_epochs={config.train.num_epochs}: {instead}"
