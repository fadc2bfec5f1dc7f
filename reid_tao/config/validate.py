"""The spec's own rules: ranges, cross-field rules, and declared-but-unsupported fields.

Names that must match an implementation's table (backbones, samplers, pipelines, optimisers, ...) and the
per-backbone rules are checked by ``reid_tao.build.check_spec``, which reads those tables; task-specific
checks (folders, checkpoints) happen in the tasks, where the paths are used.
"""
from omegaconf import DictConfig

from ..errors import ConfigError
from .schema import ModelConfig

# TransReID/SOLIDER fields TAO declares but never wires (TAO bug B4): reject any change.
UNSUPPORTED_MODEL_FIELDS = ("pretrain_hw_ratio", "stride_size", "jpm", "shift_num", "shuffle_group",
                            "devide_length", "re_arrange", "sie_coe", "sie_camera", "sie_view",
                            "semantic_weight", "cos_layer", "stem_conv", "drop_out")
POSITIVE_INTS = ("model.last_stride", "model.input_width", "model.input_height", "model.feat_dim",
                 "dataset.batch_size", "dataset.val_batch_size", "dataset.num_instances",
                 "train.num_epochs", "train.checkpoint_interval", "train.validation_interval",
                 "train.num_gpus", "train.num_nodes", "re_ranking.k1", "re_ranking.k2", "re_ranking.max_rank",
                 "evaluate.num_gpus", "inference.num_gpus", "evaluate.num_nodes", "inference.num_nodes",
                 "export.opset", "crops.camera", "crops.frame_step", "adaptation.cluster_interval",
                 "adaptation.min_samples", "adaptation.k1", "adaptation.k2")
CHOICES = {"train.checkpoint_interval_unit": ("epoch", "step"), "train.checkpointer.mode": (None, "min", "max")}
PROBABILITIES = ("dataset.prob", "dataset.re_prob", "re_ranking.lambda_value", "crops.min_inside",
                 "adaptation.momentum", "model.dropout_rate",
                 "model.drop_path", "model.att_drop_rate")


def _get(config: DictConfig, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(config: DictConfig) -> None:
    for field in POSITIVE_INTS:
        if _get(config, field) < 1:
            raise ConfigError(f"{field} must be at least 1, got {_get(config, field)}")
    for field in PROBABILITIES:
        value = _get(config, field)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{field} must be between 0 and 1, got {value}")

    for field, allowed in CHOICES.items():
        if _get(config, field) not in allowed:
            shown = ", ".join(repr(value) for value in allowed if value is not None)
            raise ConfigError(f"{field}={_get(config, field)!r} is not supported; choose one of {shown}")
    for section in ("evaluate", "inference"):
        if config[section].batch_size == 0 or config[section].batch_size < -1:
            raise ConfigError(f"{section}.batch_size must be at least 1, or -1 for dataset.val_batch_size; "
                              f"got {config[section].batch_size}")
    if config.crops.min_height < 0:
        raise ConfigError(f"crops.min_height must be at least 0, got {config.crops.min_height}")
    adaptation = config.adaptation
    for name in ("eps", "temperature"):
        if not adaptation[name] > 0:
            raise ConfigError(f"adaptation.{name} must be greater than 0, got {adaptation[name]}")
    if adaptation.memory_loss_weight < 0:
        raise ConfigError(f"adaptation.memory_loss_weight must be at least 0, got {adaptation.memory_loss_weight}")
    top_k = config.train.checkpointer.save_top_k
    if top_k == 0 or top_k < -1:
        raise ConfigError(f"train.checkpointer.save_top_k must be at least 1 (or -1: keep all), got {top_k}")

    model, dataset, optim = config.model, config.dataset, config.train.optim
    defaults = ModelConfig()
    for name in UNSUPPORTED_MODEL_FIELDS:
        if model[name] != getattr(defaults, name):
            hint = "; use model.dropout_rate" if name == "drop_out" else ""
            raise ConfigError(f"model.{name} is not supported (TAO declares it but never uses it); "
                              f"remove it from the spec{hint}")
    if model.input_channels != 3:
        raise ConfigError(f"model.input_channels={model.input_channels} is not supported: images are RGB (3)")
    if model.pretrain_choice == "self" and not model.pretrained_model_path:
        raise ConfigError("model.pretrain_choice=self needs model.pretrained_model_path (a reid_tao checkpoint)")
    if model.id_loss_weight < 0 or model.triplet_loss_weight < 0:
        raise ConfigError("model.id_loss_weight and model.triplet_loss_weight must be >= 0")

    for name in ("pixel_mean", "pixel_std"):
        if len(dataset[name]) != model.input_channels:
            raise ConfigError(f"dataset.{name} needs {model.input_channels} values, got {list(dataset[name])}")
    if any(s <= 0 for s in dataset.pixel_std):
        raise ConfigError(f"dataset.pixel_std values must be > 0, got {list(dataset.pixel_std)}")
    if dataset.padding < 0 or dataset.num_workers < 0:
        raise ConfigError("dataset.padding and dataset.num_workers must be >= 0")
    steps = list(optim.lr_steps)
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ConfigError(f"train.optim.lr_steps must be strictly increasing epochs, got {steps}")
    for name in ("base_lr", "center_lr", "gamma", "warmup_factor"):
        if optim[name] <= 0:
            raise ConfigError(f"train.optim.{name} must be > 0, got {optim[name]}")
    for name in ("weight_decay", "weight_decay_bias", "momentum", "center_loss_weight", "triplet_loss_margin",
                 "bias_lr_factor"):
        if optim[name] < 0:
            raise ConfigError(f"train.optim.{name} must be >= 0, got {optim[name]}")
    for name in ("warmup_iters", "warmup_epochs"):
        if optim[name] < 0:
            raise ConfigError(f"train.optim.{name} must be >= 0, got {optim[name]}")
    if config.train.grad_clip < 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {config.train.grad_clip}")

