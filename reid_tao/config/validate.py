"""The spec's own rules: each field's bounds, written-out choices and status (from the schema's metadata,
see ``fields.py``), then the rules that relate several fields.

Choices that name an implementation's table (backbones, samplers, pipelines, ...) and the per-backbone rules
are checked by ``reid_tao.builders.check_spec``, which can import those tables; task-specific checks (folders,
checkpoints) happen in the tasks, where the paths are used.
"""

from omegaconf import DictConfig, ListConfig, OmegaConf

from reid_tao.config.catalog import choices_text, literal_choices, spec_fields
from reid_tao.errors import ConfigError


def _check_field(path: str, value, default, meta) -> None:
    if meta.status == "unsupported" and value != default:
        instead = f"; {meta.instead}" if meta.instead else ""
        raise ConfigError(f"{path} is not supported ({meta.why}); remove it from the spec{instead}")
    allowed = literal_choices(meta.choices)
    if allowed is not None and value not in allowed and not (value is None and default is None):
        raise ConfigError(f"{path}={value!r} is not supported{meta.hint}; choose one of {choices_text(allowed)}")
    bounds = meta.bounds
    if bounds is None or value is None:
        return
    if isinstance(value, ListConfig):
        if not all(bounds.allows(item) for item in value):
            raise ConfigError(f"{path} values must be {bounds.text()}, got {list(value)}")
    elif not bounds.allows(value):
        raise ConfigError(f"{path} must be {bounds.text()}, got {value}")


def validate_config(config: DictConfig) -> None:
    for found in spec_fields():
        _check_field(found.path, OmegaConf.select(config, found.path), found.default, found.meta)

    model, dataset = config.model, config.dataset
    if model.pretrain_choice == "self" and not model.pretrained_model_path:
        raise ConfigError("model.pretrain_choice=self needs model.pretrained_model_path (a reid_tao checkpoint)")
    for name in ("pixel_mean", "pixel_std"):
        if len(dataset[name]) != model.input_channels:
            raise ConfigError(f"dataset.{name} needs {model.input_channels} values, got {list(dataset[name])}")
    steps = list(config.train.optim.lr_steps)
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ConfigError(f"train.optim.lr_steps must be strictly increasing epochs, got {steps}")
    export = config.export
    if export.data_type == "int8" and not export.calibration_dataset:
        raise ConfigError(
            "export.data_type=int8 needs export.calibration_dataset: a folder of images (or a list "
            "file) like the ones the model will see, e.g. the training folder"
        )
