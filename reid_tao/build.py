"""The one place where a spec (OmegaConf config) is mapped onto the plain-argument constructors.

Everything below this layer (model, data, evaluation, engine) takes plain arguments and raises ValueError
naming them; the config layer checks the spec's own rules. What depends on the implementations' tables
(backbone names and their input rules, samplers, pipelines, optimisers, warmup methods, ...) is checked
here, in spec field names, by :func:`check_spec`, so a new table entry needs no second list anywhere.
"""
import logging
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from .config.loader import closest_hint, load_config, schema_config
from .data.datamodule import AugmentSettings, LoaderSettings, ReidDataModule
from .data.gpu_pipeline import PIPELINES
from .data.preprocessing import Preprocessing
from .data.transforms import INTERPOLATIONS
from .engine.checkpoint import model_state_dict, read_checkpoint
from .engine.devices import ACCELERATORS
from .engine.module import ReidModule
from .engine.optim import WARMUP_METHODS, optimizer_class
from .engine.precision import PRECISIONS
from .errors import ConfigError, DataError
from .model import weights
from .model.backbones import BACKBONES, BackboneOptions
from .model.baseline import NECK_FEATURES, NECKS, Baseline
from .model.losses import ID_LOSSES, ReidLoss

log = logging.getLogger(__name__)

class Sampler(NamedTuple):
    pk_batches: bool  # PK batches (else shuffled: most anchors of a shuffled batch have no positive)
    id_loss: bool
    triplet_loss: bool


# dataset.sampler -> the batches it draws and the losses it trains with (TAO's meaning of the names).
SAMPLERS = {"softmax": Sampler(pk_batches=False, id_loss=True, triplet_loss=False),
            "triplet": Sampler(pk_batches=True, id_loss=False, triplet_loss=True),
            "softmax_triplet": Sampler(pk_batches=True, id_loss=True, triplet_loss=True)}
# model.metric_loss_type -> (keeps the sampler's triplet loss, adds the center loss).
METRIC_LOSSES = {"triplet": (True, False), "center": (False, True), "triplet_center": (True, True)}
# model.backbone options per spec field (a field applies only to backbones whose entry lists its option).
BACKBONE_OPTION_FIELDS = {"last_stride": "last_stride", "dropout_rate": "drop_rate", "drop_path": "drop_path_rate",
                          "att_drop_rate": "attn_drop_rate"}


# ------------------------------------------------------------------------------------------ the spec
def load_experiment(spec_path: Optional[str], overrides: List[str] = ()) -> DictConfig:
    """Spec file + overrides -> validated, read-only config: the config layer's rules, then :func:`check_spec`."""
    config = load_config(spec_path, overrides)
    check_spec(config)
    return config


def _choice(field: str, value, table, hint: str = "") -> None:
    if value not in table:
        shown = ", ".join(repr(name) for name in table)
        raise ConfigError(f"{field}={value!r} is not supported{hint}; choose one of {shown}"
                          f"{closest_hint(str(value), [str(name) for name in table])}")


def check_spec(config: DictConfig) -> None:
    """Check the spec's names and per-backbone rules against the implementations' tables."""
    model, data, train, optim = config.model, config.dataset, config.train, config.train.optim
    _choice("model.backbone", model.backbone, BACKBONES)
    _choice("model.pretrain_choice", model.pretrain_choice, PRETRAINED_LOADERS)
    _choice("model.neck", model.neck, NECKS)
    _choice("model.neck_feat", model.neck_feat, NECK_FEATURES)
    _choice("model.metric_loss_type", model.metric_loss_type, METRIC_LOSSES)
    _choice("model.id_loss_type", model.id_loss_type, ID_LOSSES,
            " (margin heads are broken in TAO and not implemented here)")
    _choice("dataset.sampler", data.sampler, SAMPLERS)
    _choice("dataset.interpolation", data.interpolation, INTERPOLATIONS)
    _choice("dataset.pipeline", data.pipeline, PIPELINES)
    _choice("train.optim.warmup_method", optim.warmup_method, WARMUP_METHODS)
    for section in ("train", "evaluate", "inference"):
        _choice(f"{section}.precision", config[section].precision, PRECISIONS)
    for section in ("train", "evaluate", "inference"):
        _choice(f"{section}.accelerator", config[section].accelerator, ACCELERATORS)
    try:
        optimizer_class(optim.name)
    except ValueError as error:
        raise ConfigError(f"train.optim.name: {error}") from None
    loss_components(data.sampler, model.metric_loss_type, model.with_center_loss)
    if SAMPLERS[data.sampler].pk_batches:
        if data.batch_size % data.num_instances:
            raise ConfigError(f"dataset.batch_size={data.batch_size} must be divisible by "
                              f"dataset.num_instances={data.num_instances} for the PK sampler")
        if data.batch_size // data.num_instances < 2:
            raise ConfigError("dataset.batch_size / dataset.num_instances must be at least 2 identities per batch "
                              "for the triplet loss")

    entry = BACKBONES[model.backbone]
    defaults = schema_config().model
    for field, option in BACKBONE_OPTION_FIELDS.items():
        if option not in entry.options and model[field] != defaults[field]:
            families = sorted({other.family for other in BACKBONES.values() if option in other.options})
            raise ConfigError(f"model.{field} applies to {'/'.join(families)} backbones only, not "
                              f"model.backbone={model.backbone}; remove it from the spec")
    if entry.reduces_to_feat_dim and model.reduce_feat_dim:
        raise ConfigError(f"model.reduce_feat_dim applies to backbones without a default reduction, not "
                          f"model.backbone={model.backbone} (it always reduces to model.feat_dim); remove it")
    if model.input_height % entry.input_multiple or model.input_width % entry.input_multiple:
        raise ConfigError(f"model.backbone={model.backbone} needs model.input_height and model.input_width "
                          f"divisible by {entry.input_multiple}, got {model.input_height}x{model.input_width}")


def loss_components(sampler: str, metric_loss_type: str, with_center_loss: bool) -> Tuple[bool, bool, bool]:
    """(use_id, use_triplet, use_center) for dataset.sampler, model.metric_loss_type, model.with_center_loss.

    The sampler decides ID and triplet; metric type "center" replaces the triplet loss by the center loss
    (BoT), "triplet_center" adds it, and with_center_loss adds it to whatever was selected.
    """
    _choice("dataset.sampler", sampler, SAMPLERS)
    _choice("model.metric_loss_type", metric_loss_type, METRIC_LOSSES)
    use_id, sampler_triplet = SAMPLERS[sampler].id_loss, SAMPLERS[sampler].triplet_loss
    keeps_triplet, adds_center = METRIC_LOSSES[metric_loss_type]
    use_triplet = sampler_triplet and keeps_triplet
    if not use_id and not use_triplet:
        # sampler triplet + metric center: only the center loss would remain, and alone it collapses.
        raise ConfigError("dataset.sampler 'triplet' with model.metric_loss_type 'center' leaves only the "
                          "center loss; use sampler softmax_triplet or metric_loss_type triplet_center")
    return use_id, use_triplet, adds_center or bool(with_center_loss)


# ------------------------------------------------------------------------------------------ data
def preprocessing_for(config: DictConfig) -> Preprocessing:
    return Preprocessing(input_size=(config.model.input_height, config.model.input_width),
                         pixel_mean=config.dataset.pixel_mean, pixel_std=config.dataset.pixel_std,
                         interpolation=config.dataset.interpolation)


def image_size(config: DictConfig):
    return (config.model.input_height, config.model.input_width)


def build_datamodule(config: DictConfig, with_validation: bool = True) -> ReidDataModule:
    data = config.dataset
    return ReidDataModule(
        train_dir=data.train_dataset_dir,
        query_dir=data.query_dataset_dir if with_validation else None,
        gallery_dir=data.test_dataset_dir if with_validation else None,
        preprocessing=preprocessing_for(config),
        augment=AugmentSettings(flip_prob=data.prob, padding=data.padding, erase_prob=data.re_prob),
        loader=LoaderSettings(batch_size=data.batch_size, val_batch_size=data.val_batch_size,
                              num_workers=data.num_workers, pk_batches=SAMPLERS[data.sampler].pk_batches,
                              num_instances=data.num_instances,
                              seed=max(config.train.seed, 0)),
        pipeline=data.pipeline, channels_last=config.train.channels_last)


# ------------------------------------------------------------------------------------------ model
def backbone_options(config: DictConfig) -> BackboneOptions:
    model = config.model
    return BackboneOptions(image_size=image_size(config), last_stride=model.last_stride, drop_rate=model.dropout_rate,
                           drop_path_rate=model.drop_path, attn_drop_rate=model.att_drop_rate)


def build_model(config: DictConfig, num_classes: int, load_pretrained: bool = True) -> Baseline:
    """The BNNeck model; with load_pretrained, backbone weights per model.pretrain_choice."""
    model_cfg = config.model
    entry = BACKBONES[model_cfg.backbone]
    backbone = entry.build(backbone_options(config))
    reduce = entry.reduces_to_feat_dim or model_cfg.reduce_feat_dim
    if not reduce and model_cfg.feat_dim != backbone.out_channels:
        log.info("model.feat_dim=%d is not used: %s embeddings are %d-d unless model.reduce_feat_dim=true",
                 model_cfg.feat_dim, model_cfg.backbone, backbone.out_channels)
    model = Baseline(backbone, num_classes=num_classes, feat_dim=model_cfg.feat_dim, neck=model_cfg.neck,
                     neck_feat=model_cfg.neck_feat, gem_pooling=model_cfg.gem_pooling, reduce_feat_dim=reduce)
    if load_pretrained:
        PRETRAINED_LOADERS[model_cfg.pretrain_choice](model, model_cfg)
    return model


def _load_imagenet(model: Baseline, model_cfg: DictConfig) -> None:
    if model_cfg.pretrained_model_path:  # a local copy of the ImageNet weights
        state = weights.read_state_dict(model_cfg.pretrained_model_path)
        report = weights.load_backbone_weights(model.backbone, state)
        log.info("model.pretrained_model_path: %s", report.summary())
    else:
        report = weights.load_imagenet_weights(model.backbone, model_cfg.backbone)
        log.info("ImageNet weights: %s", report.summary())


def _load_self(model: Baseline, model_cfg: DictConfig) -> None:
    """Backbone (and neck, when shapes agree) from a reid_tao checkpoint; the classifier is re-created."""
    path = model_cfg.pretrained_model_path
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


def _random_init(model: Baseline, model_cfg: DictConfig) -> None:
    log.info("model.pretrain_choice='': training %s from random initialisation", model_cfg.backbone)


# model.pretrain_choice -> how the new model's weights are initialised.
PRETRAINED_LOADERS = {"imagenet": _load_imagenet, "self": _load_self, "": _random_init}


def build_loss(config: DictConfig, num_classes: int, feat_dim: int) -> ReidLoss:
    model, data, optim = config.model, config.dataset, config.train.optim
    use_id, use_triplet, use_center = loss_components(data.sampler, model.metric_loss_type, model.with_center_loss)
    return ReidLoss(num_classes=num_classes, feat_dim=feat_dim, label_smooth=model.label_smooth,
                    id_loss_weight=model.id_loss_weight, triplet_loss_weight=model.triplet_loss_weight,
                    triplet_margin=None if model.no_margin else optim.triplet_loss_margin,
                    use_id=use_id, use_triplet=use_triplet, use_center=use_center,
                    center_loss_weight=optim.center_loss_weight)


def optimizer_arguments(config: DictConfig) -> Dict[str, Any]:
    optim = config.train.optim
    return dict(name=optim.name, base_lr=optim.base_lr, weight_decay=optim.weight_decay,
                weight_decay_bias=optim.weight_decay_bias, bias_lr_factor=optim.bias_lr_factor,
                momentum=optim.momentum, large_fc_lr=optim.large_fc_lr)


def scheduler_arguments(config: DictConfig) -> Dict[str, Any]:
    optim = config.train.optim
    return dict(method=optim.warmup_method, warmup_factor=optim.warmup_factor, warmup_iters=optim.warmup_iters,
                milestones=list(optim.lr_steps), gamma=optim.gamma, warmup_epochs=optim.warmup_epochs,
                num_epochs=config.train.num_epochs)


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_metadata(config: DictConfig, num_classes: int) -> Dict[str, Any]:
    """Stored in every checkpoint: the resolved config (the one source for the architecture), the number of
    identities (TAO needs it by hand, B9) and the preprocessing that evaluation and export must apply."""
    return {"config": OmegaConf.to_container(config, resolve=True), "num_classes": num_classes,
            "preprocessing": preprocessing_for(config).to_dict()}


def build_module(config: DictConfig, num_classes: int, num_query: int = 0, load_pretrained: bool = True) -> ReidModule:
    model = build_model(config, num_classes, load_pretrained=load_pretrained)
    return ReidModule(
        model=model, loss=build_loss(config, num_classes, model.feat_dim),
        optimizer=optimizer_arguments(config), scheduler=scheduler_arguments(config),
        center_lr=config.train.optim.center_lr,
        grad_clip=config.train.grad_clip, seed=config.train.seed, flip_feature=config.model.with_flip_feature,
        max_rank=config.re_ranking.max_rank, num_query=num_query,
        metadata=checkpoint_metadata(config, num_classes),
        compile_model=config.train.compile, channels_last=config.train.channels_last)


class TrainedModel(NamedTuple):
    model: Baseline  # in eval mode, on the CPU
    preprocessing: Preprocessing
    config: DictConfig  # the training run's config


def load_trained_model(path: str, field: str) -> TrainedModel:
    """Rebuild the trained model from the config and num_classes stored in a reid_tao checkpoint."""
    checkpoint = read_checkpoint(path, field)
    metadata = checkpoint["reid_tao"]
    config = OmegaConf.merge(schema_config(), metadata["config"])
    model = build_model(config, metadata["num_classes"], load_pretrained=False)
    model.load_state_dict(model_state_dict(checkpoint))
    model.eval()
    stored = metadata.get("preprocessing")
    preprocessing = Preprocessing.from_dict(stored) if stored else preprocessing_for(config)
    return TrainedModel(model, preprocessing, config)


def trained_num_classes(path: str, field: str) -> int:
    return read_checkpoint(path, field)["reid_tao"]["num_classes"]


def resume_path(config: DictConfig, results_dir: Path) -> Optional[str]:
    explicit = config.train.resume_training_checkpoint_path
    if explicit:
        return explicit
    latest = Path(results_dir) / "reid_model_latest.pth"
    return str(latest) if latest.is_file() else None
