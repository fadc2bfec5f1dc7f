"""The one place where a spec (OmegaConf config) is mapped onto the plain-argument constructors.

Everything below this layer (model, data, evaluation, engine) takes plain arguments and raises ValueError
naming them; the config layer checks the spec's own rules. What depends on the implementations' tables
(backbone names and their input rules, samplers, pipelines, optimisers, warmup methods, ...) is checked
here, in spec field names, by :func:`check_spec`, so a new table entry needs no second list anywhere.
"""
import logging
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config.loader import closest_hint, load_config, schema_config, task_results_dir
from .config.notices import warmup_length
from .data.datamodule import AugmentSettings, LoaderSettings, ReidDataModule
from .data.gpu_pipeline import PIPELINES
from .data.preprocessing import Preprocessing
from .data.transforms import INTERPOLATIONS
from .engine.checkpoint import (is_reid_tao_checkpoint, is_tao_checkpoint, model_state_dict, read_checkpoint,
                                read_checkpoint_file)
from .engine.devices import ACCELERATORS
from .engine.checkpoint import INTERVAL_UNITS, LATEST_NAME
from .engine.module import METRIC_MODES, VALIDATION_METRICS, ReidModule
from .engine.optim import WARMUP_METHODS, optimizer_class
from .engine.precision import PRECISIONS
from .errors import ConfigError, DataError
from .evaluation.plots import QUERY_CHOICES
from .model import weights
from .model.backbones import BACKBONES, BackboneOptions
from .model.baseline import NECK_FEATURES, NECKS, Baseline
from .model.losses import ID_LOSSES, ReidLoss
from .model.tao_baseline import TAO_RESNET_LAYERS, TAO_RESNET_WIDTH, TaoBaseline, TaoResNet

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
    _choice("train.checkpoint_interval_unit", train.checkpoint_interval_unit, INTERVAL_UNITS)
    if train.checkpointer.monitor is not None:
        _choice("train.checkpointer.monitor", train.checkpointer.monitor, METRIC_MODES)
    _choice("evaluate.sampled_matches", config.evaluate.sampled_matches, QUERY_CHOICES)
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
        state = weights.read_state_dict(model_cfg.pretrained_model_path, trust=model_cfg.trust_weights_file)
        report = weights.load_backbone_weights(model.backbone, state)
        log.info("model.pretrained_model_path: %s", report.summary())
    else:
        report = weights.load_imagenet_weights(model.backbone, model_cfg.backbone)
        log.info("ImageNet weights: %s", report.summary())


def _load_self(model: Baseline, model_cfg: DictConfig) -> None:
    """From a reid_tao checkpoint: backbone (and neck, when shapes agree), the classifier re-created. Any
    other file (TAO checkpoint, timm/Microsoft/torchvision weights) is read as backbone weights, as TAO does."""
    path = model_cfg.pretrained_model_path
    checkpoint = read_checkpoint_file(path, "model.pretrained_model_path", trust=model_cfg.trust_weights_file)
    if not is_reid_tao_checkpoint(checkpoint):
        log.info("model.pretrain_choice=self: %s is not a reid_tao checkpoint; reading it as backbone weights", path)
        if is_tao_checkpoint(checkpoint):
            _check_tao_backbone_fits(checkpoint, model_cfg)
        weights.load_backbone_weights(model.backbone, checkpoint)  # logs its match report, fails when poor
        return
    state = model_state_dict(checkpoint)
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


def _check_tao_backbone_fits(checkpoint: Dict[str, Any], model_cfg: DictConfig) -> None:
    """TAO's ResNets are Bottleneck nets for every depth; say so when ours is not, and what differs when it is."""
    state = model_state_dict(checkpoint)
    if "base.conv1.weight" not in state:
        return  # a TAO Swin: the weight report tells how much matched
    layers = _tao_resnet_layers(state)
    # Our 2048-wide ResNets are Bottleneck nets with TAO's block counts; resnet_18/34 are BasicBlock nets.
    fitting = [name for name, entry in BACKBONES.items() if entry.family == "ResNet"
               and entry.feature_width == TAO_RESNET_WIDTH and TAO_RESNET_LAYERS.get(name) == layers]
    if model_cfg.backbone not in fitting:
        ours = BACKBONES[model_cfg.backbone]
        kind = ("BasicBlock" if ours.feature_width != TAO_RESNET_WIDTH else "other block counts") \
            if ours.family == "ResNet" else ours.family
        advice = (f"use model.backbone={fitting[0]}, which has the same layout" if fitting else
                  "no reid_tao backbone has this layout; use model.pretrain_choice=imagenet")
        raise DataError(f"model.pretrained_model_path: {model_cfg.pretrained_model_path} is a TAO ResNet with "
                        f"Bottleneck blocks {list(layers)} (TAO builds every resnet_* that way), but "
                        f"model.backbone={model_cfg.backbone} here has {kind}; {advice}")
    log.info("model.pretrain_choice=self: TAO ResNet weights; this %s has a ReLU after the stem BatchNorm (TAO "
             "has none) and no base.feature 1x1 convolution, so features differ until fine-tuned", model_cfg.backbone)


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
    """The schedule's arguments, with a warmup longer than the run shortened (see config.notices.warmup_length)."""
    optim = config.train.optim
    arguments = dict(method=optim.warmup_method, warmup_factor=optim.warmup_factor, warmup_iters=optim.warmup_iters,
                     milestones=list(optim.lr_steps), gamma=optim.gamma, warmup_epochs=optim.warmup_epochs,
                     num_epochs=config.train.num_epochs)
    warmup = warmup_length(config)
    arguments[warmup.field.rpartition(".")[2]] = warmup.used
    return arguments


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_settings(config: DictConfig) -> Dict[str, Any]:
    """Keyword arguments of engine.checkpoint.checkpoint_callbacks from train.checkpoint_interval(_unit) and
    train.checkpointer (TAO 7.3: best-k by a metric, default mAP, beside the periodic and latest files)."""
    train, chosen = config.train, config.train.checkpointer
    best = None
    if chosen.enable_topk:
        monitor = chosen.monitor or "mAP"
        best = dict(monitor=monitor, mode=chosen.mode or METRIC_MODES[monitor], save_top_k=chosen.save_top_k,
                    filename=chosen.filename, dirpath=chosen.dirpath,
                    auto_insert_metric_name=chosen.auto_insert_metric_name,
                    save_on_train_epoch_end=monitor not in VALIDATION_METRICS)
    return dict(interval=train.checkpoint_interval, unit=train.checkpoint_interval_unit,
                periodic=not (chosen.enable_topk and chosen.replace_periodic), best=best)


def needs_validation(config: DictConfig) -> Optional[str]:
    """The spec field that needs validation folders (a best-k checkpoint on a validation metric), or None."""
    chosen = config.train.checkpointer
    if chosen.enable_topk and (chosen.monitor or "mAP") in VALIDATION_METRICS:
        return "train.checkpointer.monitor"
    return None


def wandb_settings(config: DictConfig) -> Optional[Dict[str, Any]]:
    """WandbLogger keyword arguments from the wandb section, or None when wandb.enable is false."""
    wandb = config.wandb
    if not wandb.enable:
        return None
    return dict(project=wandb.project, name=wandb.name, id=wandb.run_id or None, entity=wandb.entity or None,
                group=wandb.group or None, tags=list(wandb.tags), reinit=wandb.reinit,
                sync_tensorboard=wandb.sync_tensorboard, save_code=wandb.save_code)


def task_checkpoint(config: DictConfig, task: str) -> str:
    """<task>.checkpoint, or, when unset, the latest checkpoint of this results_dir's training (said in the log)."""
    own = config[task].checkpoint
    if own:
        return own
    latest = task_results_dir(config, "train") / f"{LATEST_NAME}.pth"
    if not latest.is_file():
        raise ConfigError(f"{task}.checkpoint is not set and there is no {latest} to fall back to; "
                          f"pass {task}.checkpoint=/path/to/reid_model_latest.pth")
    log.info("%s.checkpoint is not set: using %s", task, latest)
    return str(latest)


def extraction_batch_size(config: DictConfig, task: str) -> int:
    """<task>.batch_size, or dataset.val_batch_size when it is -1 (TAO's default)."""
    own = config[task].batch_size
    return own if own > 0 else config.dataset.val_batch_size


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
    model: nn.Module  # in eval mode, on the CPU; eval forward gives embeddings, .feat_dim their width
    preprocessing: Preprocessing
    config: DictConfig  # the training run's config (for a TAO checkpoint: the settings it was rebuilt with)


def load_trained_model(path: str, field: str, config: Optional[DictConfig] = None, trust: bool = False
                       ) -> TrainedModel:
    """Rebuild a trained model from a checkpoint of any known architecture (see ARCHITECTURES).

    ``config`` is the current spec: a TAO checkpoint without hyper-parameters takes its test-time settings
    (neck_feat, last_stride, input size, mean/std) from it. ``trust``: model.trust_weights_file, full
    unpickling allowed.
    """
    checkpoint = read_checkpoint_file(path, field, trust=trust)
    for architecture in ARCHITECTURES.values():
        if architecture.detect(checkpoint):
            trained = architecture.rebuild(checkpoint, config, f"{field}: {path}")
            trained.model.eval()
            return trained
    raise DataError(f"{field}: {path} is neither a reid_tao checkpoint nor a TAO ReIdentificationNet checkpoint "
                    "(no reid_tao metadata, no model.base.* weights); use a file written by `reid train` or TAO")


def _rebuild_reid_tao(checkpoint: Dict[str, Any], config: Optional[DictConfig], source: str) -> TrainedModel:
    """Our Baseline from the config and num_classes stored in a reid_tao checkpoint."""
    metadata = checkpoint["reid_tao"]
    trained_config = OmegaConf.merge(schema_config(), metadata["config"])
    model = build_model(trained_config, metadata["num_classes"], load_pretrained=False)
    model.load_state_dict(model_state_dict(checkpoint))
    stored = metadata.get("preprocessing")
    preprocessing = Preprocessing.from_dict(stored) if stored else preprocessing_for(trained_config)
    return TrainedModel(model, preprocessing, trained_config)


# What a TAO checkpoint's weights do not tell: taken from its hyper-parameters, else from the current spec.
TAO_SETTINGS = {"model": ("backbone", "last_stride", "neck_feat", "input_height", "input_width"),
                "dataset": ("pixel_mean", "pixel_std")}


def _tao_settings(checkpoint: Dict[str, Any], config: Optional[DictConfig]) -> Tuple[DictConfig, str]:
    """The current spec (or the defaults) with TAO_SETTINGS replaced by the checkpoint's hyper-parameters."""
    base = OmegaConf.to_container(config if config is not None else schema_config(), resolve=True)
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, DictConfig):
        hparams = OmegaConf.to_container(hparams, resolve=True)
    spec = hparams.get("experiment_spec", hparams) if isinstance(hparams, Mapping) else None
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    taken = {}
    if isinstance(spec, Mapping):
        for section, names in TAO_SETTINGS.items():
            stored = spec.get(section)
            if isinstance(stored, Mapping):
                taken[section] = {name: stored[name] for name in names if stored.get(name) is not None}
    found = sum(len(values) for values in taken.values())
    origin = ("the checkpoint's hyper_parameters" if found else
              "the current spec (model.*, dataset.*)" if config is not None else "reid_tao's defaults")
    if found and found < sum(len(names) for names in TAO_SETTINGS.values()):
        origin += ", the rest from the current spec"
    return OmegaConf.merge(schema_config(), base, taken), origin


def _tao_resnet_layers(state: Dict[str, Any]) -> Tuple[int, ...]:
    """Blocks per stage, counted from the keys base.layer<stage>.<block>.*."""
    blocks = [set() for _ in range(4)]
    for key in state:
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "base" and parts[1] in ("layer1", "layer2", "layer3", "layer4"):
            blocks[int(parts[1][-1]) - 1].add(parts[2])
    return tuple(len(found) for found in blocks)


def _rebuild_tao_resnet(checkpoint: Dict[str, Any], config: Optional[DictConfig], source: str) -> TrainedModel:
    """TAO's own ResNet network (see reid_tao.model.tao_baseline) from the weights' shapes and TAO's settings."""
    if checkpoint.get("state_dict_encrypted"):
        raise DataError(f"{source} is encrypted by TAO; decrypt it with TAO (its encryption key) first")
    state = model_state_dict(checkpoint)
    if "classifier.weight" not in state:
        raise DataError(f"{source} is a TAO checkpoint without model.classifier.weight; is the file complete?")
    settings, origin = _tao_settings(checkpoint, config)
    layers = _tao_resnet_layers(state)
    feature = state.get("base.feature.weight")
    feat_dim = int(feature.shape[0]) if feature is not None else TAO_RESNET_WIDTH
    neck = "bnneck" if "bottleneck.weight" in state else ""
    num_classes = int(state["classifier.weight"].shape[0])
    name = settings.model.backbone
    if TAO_RESNET_LAYERS.get(name) != layers:  # the weights decide; the spec's name may be another one
        name = next((known for known, counts in TAO_RESNET_LAYERS.items() if counts == layers), name)
    try:
        model = TaoBaseline(TaoResNet(layers, last_stride=settings.model.last_stride, feat_dim=feat_dim),
                            num_classes=num_classes, neck=neck, neck_feat=settings.model.neck_feat)
    except ValueError as error:
        raise DataError(f"{source}: cannot rebuild TAO's ResNet ({error})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DataError(f"{source}: TAO ResNet weights do not fit TAO's network (missing "
                        f"{', '.join(result.missing_keys[:3]) or '-'}; unexpected "
                        f"{', '.join(result.unexpected_keys[:3]) or '-'})")
    trained_config = OmegaConf.merge(settings, {"model": {"backbone": name, "feat_dim": feat_dim, "neck": neck},
                                                "dataset": {"num_classes": num_classes}})
    known = name if TAO_RESNET_LAYERS.get(name) == layers else "no TAO name"
    log.info("%s: TAO ResNet checkpoint (%s: Bottleneck blocks %s, %d-d features, %d classes, neck %r); "
             "neck_feat=%s, last_stride=%d, input %dx%d and pixel mean/std from %s", source, known, list(layers),
             feat_dim, num_classes, neck, settings.model.neck_feat, settings.model.last_stride,
             settings.model.input_height, settings.model.input_width, origin)
    return TrainedModel(model, preprocessing_for(settings), trained_config)


def _rebuild_tao_swin(checkpoint: Dict[str, Any], config: Optional[DictConfig], source: str) -> TrainedModel:
    raise DataError(f"{source} is a TAO Swin checkpoint; reid_tao rebuilds TAO's ResNet networks only. Fine-tune "
                    "from it with model.pretrain_choice=self and model.pretrained_model_path")


class Architecture(NamedTuple):
    detect: Callable[[Dict[str, Any]], bool]  # is a checkpoint dict of this architecture?
    rebuild: Callable[[Dict[str, Any], Optional[DictConfig], str], TrainedModel]


def _tao_with(key: str) -> Callable[[Dict[str, Any]], bool]:
    return lambda checkpoint: is_tao_checkpoint(checkpoint) and key in checkpoint["state_dict"]


# Trained-model architectures, tried in order: reid_tao's own checkpoints, then TAO's by their key layout.
ARCHITECTURES = {
    "reid_tao": Architecture(is_reid_tao_checkpoint, _rebuild_reid_tao),
    "tao_resnet": Architecture(_tao_with("model.base.conv1.weight"), _rebuild_tao_resnet),
    "tao_swin": Architecture(_tao_with("model.base.patch_embed.projection.weight"), _rebuild_tao_swin),
}


def trained_num_classes(path: str, field: str, trust: bool = False) -> int:
    return read_checkpoint(path, field, trust=trust)["reid_tao"]["num_classes"]


def resume_path(config: DictConfig, results_dir: Path) -> Optional[str]:
    explicit = config.train.resume_training_checkpoint_path
    if explicit:
        return explicit
    latest = Path(results_dir) / "reid_model_latest.pth"
    return str(latest) if latest.is_file() else None
