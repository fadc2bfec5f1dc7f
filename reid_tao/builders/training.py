"""The training objects built from the spec: data module, model, loss, optimiser and schedule arguments,
checkpoint and logger settings, and the LightningModule that holds them."""

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reid_tao.builders.pretrained import PRETRAINED_LOADERS, load_adaptation_source
from reid_tao.builders.spec import BATCH_RECIPES, SOURCE_TERMS, loss_terms
from reid_tao.config.notices import warmup_length
from reid_tao.data.datamodule import AugmentSettings, LoaderSettings, ReidDataModule
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.engine.metric_names import VALIDATION_METRICS, metric_modes
from reid_tao.engine.module import ReidModule
from reid_tao.model.backbones import BACKBONES, BackboneOptions
from reid_tao.model.baseline import Baseline
from reid_tao.model.losses import LOSS_TERMS, LossSettings, ReidLoss, build_reid_loss

log = logging.getLogger(__name__)

# adaptation: the identities are clusters that change; the unused classifier gets one output (with a labelled
# source stream it has one per source identity: training_num_classes)
ADAPTATION_NUM_CLASSES = 1


# ------------------------------------------------------------------------------------------ data
def preprocessing_for(config: DictConfig) -> Preprocessing:
    return Preprocessing(
        input_size=(config.model.input_height, config.model.input_width),
        pixel_mean=config.dataset.pixel_mean,
        pixel_std=config.dataset.pixel_std,
        interpolation=config.dataset.interpolation,
    )


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
        loader=LoaderSettings(
            batch_size=data.batch_size,
            val_batch_size=data.val_batch_size,
            num_workers=data.num_workers,
            pk_batches=BATCH_RECIPES[data.sampler].pk_batches,
            num_instances=data.num_instances,
            seed=max(config.train.seed, 0),
            camera_balanced=config.adaptation.enable and config.adaptation.camera_balanced_batches,
        ),
        pipeline=data.pipeline,
        channels_last=config.train.channels_last,
        layout=data.layout,
        unlabeled=config.adaptation.enable,
        source_dir=source_dataset_dir(config),
    )


def source_dataset_dir(config: DictConfig) -> str | None:
    """adaptation.source_dataset_dir when adaptation.enable (the labelled source stream), else None."""
    return config.adaptation.source_dataset_dir if config.adaptation.enable else None


def training_num_classes(config: DictConfig, datamodule: ReidDataModule) -> int:
    """The classifier's rows: the training identities; with adaptation ADAPTATION_NUM_CLASSES, or the source
    identities with a source stream (the data module must have run setup)."""
    if not config.adaptation.enable:
        return datamodule.num_classes
    return datamodule.num_source_classes if source_dataset_dir(config) else ADAPTATION_NUM_CLASSES


# ------------------------------------------------------------------------------------------ model
def backbone_options(config: DictConfig) -> BackboneOptions:
    model = config.model
    return BackboneOptions(
        image_size=image_size(config),
        last_stride=model.last_stride,
        drop_rate=model.dropout_rate,
        drop_path_rate=model.drop_path,
        attn_drop_rate=model.att_drop_rate,
    )


def build_model(config: DictConfig, num_classes: int, load_pretrained: bool = True) -> Baseline:
    """The BNNeck model; with load_pretrained, backbone weights per model.pretrain_choice."""
    model_cfg = config.model
    entry = BACKBONES[model_cfg.backbone]
    backbone = entry.build(backbone_options(config))
    reduce = entry.reduces_to_feat_dim or model_cfg.reduce_feat_dim
    if not reduce and model_cfg.feat_dim != backbone.out_channels:
        log.info(
            "model.feat_dim=%d is not used: %s embeddings are %d-d unless model.reduce_feat_dim=true",
            model_cfg.feat_dim,
            model_cfg.backbone,
            backbone.out_channels,
        )
    model = Baseline(
        backbone,
        num_classes=num_classes,
        feat_dim=model_cfg.feat_dim,
        neck=model_cfg.neck,
        neck_feat=model_cfg.neck_feat,
        gem_pooling=model_cfg.gem_pooling,
        reduce_feat_dim=reduce,
    )
    if load_pretrained and config.adaptation.enable:
        load_adaptation_source(
            model, model_cfg, config.adaptation.source_checkpoint, with_classifier=bool(source_dataset_dir(config))
        )
    elif load_pretrained:
        PRETRAINED_LOADERS[model_cfg.pretrain_choice](model, model_cfg)
    return model


def build_loss(config: DictConfig, num_classes: int, feat_dim: int) -> ReidLoss:
    """The chosen LOSS_TERMS, each weighted by the spec field its class names (weight_field)."""
    model, data, adaptation = config.model, config.dataset, config.adaptation
    names = loss_terms(data.sampler, model.metric_loss_type, model.with_center_loss, adaptation.enable)
    return _weighted_loss(config, names, num_classes, feat_dim)


def build_source_loss(config: DictConfig, num_classes: int, feat_dim: int) -> ReidLoss | None:
    """The loss of the labelled source batch (SOURCE_TERMS, weighted as in supervised training), or None
    without a source stream."""
    if not source_dataset_dir(config):
        return None
    return _weighted_loss(config, SOURCE_TERMS, num_classes, feat_dim)


def _weighted_loss(config: DictConfig, names, num_classes: int, feat_dim: int) -> ReidLoss:
    model, adaptation = config.model, config.adaptation
    settings = LossSettings(
        num_classes=num_classes,
        feat_dim=feat_dim,
        label_smooth=model.label_smooth,
        triplet_margin=None if model.no_margin else config.train.optim.triplet_loss_margin,
        memory_temperature=adaptation.temperature,
        memory_momentum=adaptation.momentum,
        camera_temperature=adaptation.camera_temperature,
        camera_momentum=adaptation.momentum,
        camera_inter_weight=adaptation.camera_inter_weight,
        camera_hard_negatives=adaptation.camera_hard_negatives,
    )
    weights = {}
    for name in names:
        field = LOSS_TERMS[name].weight_field
        if field:
            weights[name] = OmegaConf.select(config, field, default=None)
            if weights[name] is None:  # a programming error: the term names a field the schema lacks
                raise ValueError(f"loss term {name!r} takes its weight from {field}, which is not a spec field")
    return build_reid_loss(names, settings, weights)


def optimizer_arguments(config: DictConfig) -> dict[str, Any]:
    optim = config.train.optim
    return dict(
        name=optim.name,
        base_lr=optim.base_lr,
        weight_decay=optim.weight_decay,
        weight_decay_bias=optim.weight_decay_bias,
        bias_lr_factor=optim.bias_lr_factor,
        momentum=optim.momentum,
        large_fc_lr=optim.large_fc_lr,
    )


def scheduler_arguments(config: DictConfig) -> dict[str, Any]:
    """The schedule's arguments, with a warmup longer than the run shortened (see config.notices.warmup_length)."""
    optim = config.train.optim
    arguments = dict(
        method=optim.warmup_method,
        warmup_factor=optim.warmup_factor,
        warmup_iters=optim.warmup_iters,
        milestones=list(optim.lr_steps),
        gamma=optim.gamma,
        warmup_epochs=optim.warmup_epochs,
        num_epochs=config.train.num_epochs,
    )
    warmup = warmup_length(config)
    arguments[warmup.field.rpartition(".")[2]] = warmup.used
    return arguments


# ------------------------------------------------------------------------------------------ checkpoints and loggers
def checkpoint_settings(config: DictConfig) -> dict[str, Any]:
    """Keyword arguments of engine.checkpoint.checkpoint_callbacks from train.checkpoint_interval(_unit) and
    train.checkpointer (TAO 7.3: best-k by a metric, default mAP, beside the periodic and latest files)."""
    train, chosen = config.train, config.train.checkpointer
    best = None
    if chosen.enable_topk:
        monitor = chosen.monitor or "mAP"
        best = dict(
            monitor=monitor,
            mode=chosen.mode or metric_modes()[monitor],
            save_top_k=chosen.save_top_k,
            filename=chosen.filename,
            dirpath=chosen.dirpath,
            auto_insert_metric_name=chosen.auto_insert_metric_name,
            save_on_train_epoch_end=monitor not in VALIDATION_METRICS,
        )
    return dict(
        interval=train.checkpoint_interval,
        unit=train.checkpoint_interval_unit,
        periodic=not (chosen.enable_topk and chosen.replace_periodic),
        best=best,
    )


def needs_validation(config: DictConfig) -> str | None:
    """The spec field that needs validation folders (a best-k checkpoint on a validation metric), or None."""
    chosen = config.train.checkpointer
    if chosen.enable_topk and (chosen.monitor or "mAP") in VALIDATION_METRICS:
        return "train.checkpointer.monitor"
    return None


def wandb_settings(config: DictConfig) -> dict[str, Any] | None:
    """WandbLogger keyword arguments from the wandb section, or None when wandb.enable is false."""
    wandb = config.wandb
    if not wandb.enable:
        return None
    return dict(
        project=wandb.project,
        name=wandb.name,
        id=wandb.run_id or None,
        entity=wandb.entity or None,
        group=wandb.group or None,
        tags=list(wandb.tags),
        reinit=wandb.reinit,
        sync_tensorboard=wandb.sync_tensorboard,
        save_code=wandb.save_code,
    )


def extraction_batch_size(config: DictConfig, task: str) -> int:
    """<task>.batch_size, or dataset.val_batch_size when it is -1 (TAO's default)."""
    own = config[task].batch_size
    return own if own > 0 else config.dataset.val_batch_size


def checkpoint_metadata(config: DictConfig, num_classes: int) -> dict[str, Any]:
    """Stored in every checkpoint: the resolved config (the one source for the architecture), the number of
    identities (TAO needs it by hand, B9) and the preprocessing that evaluation and export must apply."""
    return {
        "config": OmegaConf.to_container(config, resolve=True),
        "num_classes": num_classes,
        "preprocessing": preprocessing_for(config).to_dict(),
    }


def build_module(config: DictConfig, num_classes: int, num_query: int = 0, load_pretrained: bool = True) -> ReidModule:
    model = build_model(config, num_classes, load_pretrained=load_pretrained)
    if config.adaptation.enable:
        model.train_metric_losses_on_neck()  # the clustered and memorised feature (Cluster Contrast)
    return ReidModule(
        model=model,
        loss=build_loss(config, num_classes, model.feat_dim),
        source_loss=build_source_loss(config, num_classes, model.feat_dim),
        source_loss_weight=config.adaptation.source_loss_weight,
        optimizer=optimizer_arguments(config),
        scheduler=scheduler_arguments(config),
        center_lr=config.train.optim.center_lr,
        grad_clip=config.train.grad_clip,
        seed=config.train.seed,
        flip_feature=config.model.with_flip_feature,
        max_rank=config.re_ranking.max_rank,
        num_query=num_query,
        metadata=checkpoint_metadata(config, num_classes),
        compile_model=config.train.compile,
        channels_last=config.train.channels_last,
        re_ranking=re_ranking_arguments(config),
        val_precision=config.evaluate.precision,
    )


def re_ranking_arguments(config: DictConfig) -> dict[str, Any] | None:
    """re_ranking.k1/k2/lambda_value when re_ranking.re_ranking asks for re-ranked metrics, else None."""
    section = config.re_ranking
    if not section.re_ranking:
        return None
    return {"k1": section.k1, "k2": section.k2, "lambda_value": section.lambda_value}
