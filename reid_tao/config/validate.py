"""Semantic checks of a merged config: allowed names, ranges, and declared-but-unsupported fields.

Task-specific checks (folders, checkpoints) happen in the tasks, where the paths are used.
"""
from omegaconf import DictConfig

from ..errors import ConfigError
from ..model.losses.combined import loss_components
from .schema import ModelConfig

RESNET_BACKBONES = ("resnet_18", "resnet_34", "resnet_50", "resnet_101", "resnet_152")
SWIN_BACKBONES = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")
ALLOWED = {
    "model.backbone": RESNET_BACKBONES + SWIN_BACKBONES,
    "model.pretrain_choice": ("imagenet", "self", ""),
    "model.neck": ("bnneck", ""),
    "model.neck_feat": ("after", "before"),
    "model.metric_loss_type": ("triplet", "center", "triplet_center"),
    "model.id_loss_type": ("softmax",),
    "dataset.sampler": ("softmax", "triplet", "softmax_triplet"),
    "dataset.interpolation": ("bilinear", "bicubic"),
    "dataset.pipeline": ("auto", "gpu", "cpu"),
    "train.optim.warmup_method": ("linear", "constant", "cosine"),
    "train.precision": ("auto", "32", "16-mixed", "bf16-mixed"),
    "train.accelerator": ("auto", "gpu", "cpu"),
    "evaluate.accelerator": ("auto", "gpu", "cpu"),
    "inference.accelerator": ("auto", "gpu", "cpu"),
}
# TransReID/SOLIDER fields TAO declares but never wires (TAO bug B4): reject any change.
UNSUPPORTED_MODEL_FIELDS = ("pretrain_hw_ratio", "stride_size", "jpm", "shift_num", "shuffle_group",
                            "devide_length", "re_arrange", "sie_coe", "sie_camera", "sie_view",
                            "semantic_weight", "cos_layer", "stem_conv", "drop_out")
SWIN_ONLY_FIELDS = ("dropout_rate", "drop_path", "att_drop_rate", "reduce_feat_dim")
POSITIVE_INTS = ("model.last_stride", "model.input_width", "model.input_height", "model.feat_dim",
                 "dataset.batch_size", "dataset.val_batch_size", "dataset.num_instances",
                 "train.num_epochs", "train.checkpoint_interval", "train.validation_interval",
                 "train.num_gpus", "train.num_nodes", "re_ranking.k1", "re_ranking.k2", "re_ranking.max_rank",
                 "evaluate.num_gpus", "inference.num_gpus", "export.opset")
PROBABILITIES = ("dataset.prob", "dataset.re_prob", "re_ranking.lambda_value", "model.dropout_rate",
                 "model.drop_path", "model.att_drop_rate")


def _get(config: DictConfig, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(config: DictConfig) -> None:
    for field, allowed in ALLOWED.items():
        value = _get(config, field)
        if value not in allowed:
            shown = ", ".join(repr(a) for a in allowed)
            hint = " (margin heads are broken in TAO and not implemented here)" if field == "model.id_loss_type" else ""
            raise ConfigError(f"{field}={value!r} is not supported{hint}; choose one of {shown}")
    for field in POSITIVE_INTS:
        if _get(config, field) < 1:
            raise ConfigError(f"{field} must be at least 1, got {_get(config, field)}")
    for field in PROBABILITIES:
        value = _get(config, field)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{field} must be between 0 and 1, got {value}")

    model, dataset, optim = config.model, config.dataset, config.train.optim
    defaults = ModelConfig()
    for name in UNSUPPORTED_MODEL_FIELDS:
        if model[name] != getattr(defaults, name):
            hint = "; use model.dropout_rate" if name == "drop_out" else ""
            raise ConfigError(f"model.{name} is not supported (TAO declares it but never uses it); "
                              f"remove it from the spec{hint}")
    if model.backbone in RESNET_BACKBONES:
        for name in SWIN_ONLY_FIELDS:
            if model[name] != getattr(defaults, name):
                raise ConfigError(f"model.{name} applies to Swin backbones only, not model.backbone={model.backbone}; "
                                  "remove it from the spec")
    else:
        if model.input_height % 32 or model.input_width % 32:
            raise ConfigError(f"Swin backbones need model.input_height and model.input_width divisible by 32, "
                              f"got {model.input_height}x{model.input_width}")
        if model.last_stride != defaults.last_stride:
            raise ConfigError("model.last_stride applies to ResNet backbones only; remove it for Swin")
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
    if dataset.sampler != "softmax":
        if dataset.batch_size % dataset.num_instances:
            raise ConfigError(f"dataset.batch_size={dataset.batch_size} must be divisible by "
                              f"dataset.num_instances={dataset.num_instances} for the PK sampler")
        if dataset.batch_size // dataset.num_instances < 2:
            raise ConfigError("dataset.batch_size / dataset.num_instances must be at least 2 identities per batch "
                              "for the triplet loss")
    loss_components(dataset.sampler, model.metric_loss_type, model.with_center_loss)
    if optim.lr_monitor != "val_loss":
        raise ConfigError("train.optim.lr_monitor is not used (TAO declares it but never uses it); remove it")
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
    if optim.warmup_method == "cosine" and optim.warmup_epochs >= config.train.num_epochs:
        raise ConfigError(f"train.optim.warmup_epochs={optim.warmup_epochs} must be smaller than "
                          f"train.num_epochs={config.train.num_epochs} for the cosine schedule")
    if config.train.grad_clip < 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {config.train.grad_clip}")

