"""The one place where a spec (OmegaConf config) is mapped onto the plain-argument constructors."""
import logging
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from .config.validate import RESNET_BACKBONES
from .data.datamodule import ReidDataModule
from .model.baseline import Baseline

log = logging.getLogger(__name__)


def image_size(config: DictConfig):
    return (config.model.input_height, config.model.input_width)


def build_datamodule(config: DictConfig, with_validation: bool = True) -> ReidDataModule:
    data = config.dataset
    return ReidDataModule(
        train_dir=data.train_dataset_dir,
        query_dir=data.query_dataset_dir if with_validation else None,
        gallery_dir=data.test_dataset_dir if with_validation else None,
        image_size=image_size(config), pixel_mean=list(data.pixel_mean), pixel_std=list(data.pixel_std),
        batch_size=data.batch_size, val_batch_size=data.val_batch_size, num_workers=data.num_workers,
        sampler=data.sampler, num_instances=data.num_instances, flip_prob=data.prob, padding=data.padding,
        erase_prob=data.re_prob, interpolation=data.interpolation, seed=max(config.train.seed, 0),
        pipeline=data.pipeline, channels_last=config.train.channels_last)


def build_backbone(config: DictConfig):
    model = config.model
    if model.backbone in RESNET_BACKBONES:
        from .model.backbones.resnet import ResNetBackbone

        return ResNetBackbone(depth=int(model.backbone.split("_")[1]), last_stride=model.last_stride)
    from .model.backbones.swin import SwinBackbone

    return SwinBackbone(model.backbone, img_size=image_size(config), drop_path_rate=model.drop_path,
                        drop_rate=model.dropout_rate, attn_drop_rate=model.att_drop_rate)


def build_model(config: DictConfig, num_classes: int, load_pretrained: bool = True) -> Baseline:
    """The BNNeck model; with load_pretrained, backbone weights per model.pretrain_choice."""
    model_cfg = config.model
    backbone = build_backbone(config)
    is_resnet = model_cfg.backbone in RESNET_BACKBONES
    if not is_resnet and not model_cfg.reduce_feat_dim and model_cfg.feat_dim != backbone.out_channels:
        log.info("model.feat_dim=%d is not used: %s embeddings are %d-d unless model.reduce_feat_dim=true",
                 model_cfg.feat_dim, model_cfg.backbone, backbone.out_channels)
    model = Baseline(backbone, num_classes=num_classes, feat_dim=model_cfg.feat_dim, neck=model_cfg.neck,
                     neck_feat=model_cfg.neck_feat, gem_pooling=model_cfg.gem_pooling,
                     reduce_feat_dim=is_resnet or model_cfg.reduce_feat_dim)
    if load_pretrained:
        _load_pretrained(model, model_cfg)
    return model


def _load_pretrained(model: Baseline, model_cfg: DictConfig) -> None:
    from .model import weights

    if model_cfg.pretrain_choice == "self":
        from .engine.checkpoint import load_self_pretrained

        load_self_pretrained(model, model_cfg.pretrained_model_path)
    elif model_cfg.pretrained_model_path:
        state = weights.read_state_dict(model_cfg.pretrained_model_path)
        report = weights.load_backbone_weights(model.backbone, state)
        log.info("model.pretrained_model_path: %s", report.summary())
    elif model_cfg.pretrain_choice == "imagenet":
        report = weights.load_imagenet_weights(model.backbone, model_cfg.backbone)
        log.info("ImageNet weights: %s", report.summary())
    else:
        log.info("model.pretrain_choice='': training %s from random initialisation", model_cfg.backbone)


def build_loss(config: DictConfig, num_classes: int, feat_dim: int):
    from .model.losses import ReidLoss
    from .model.losses.combined import loss_components

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


def checkpoint_metadata(config: DictConfig, num_classes: int, feat_dim: int) -> Dict[str, Any]:
    """What evaluate/inference/export need later, stored in every checkpoint (TAO needs num_classes by hand, B9)."""
    return {
        "config": OmegaConf.to_container(config, resolve=True),
        "num_classes": num_classes,
        "feat_dim": feat_dim,
        "backbone": config.model.backbone,
        "input_size": [config.model.input_height, config.model.input_width],
        "pixel_mean": list(config.dataset.pixel_mean),
        "pixel_std": list(config.dataset.pixel_std),
        "interpolation": config.dataset.interpolation,
        "neck_feat": config.model.neck_feat,
    }


def build_module(config: DictConfig, num_classes: int, num_query: int = 0, load_pretrained: bool = True):
    from .engine.module import ReidModule

    model = build_model(config, num_classes, load_pretrained=load_pretrained)
    return ReidModule(
        model=model, loss=build_loss(config, num_classes, model.feat_dim),
        optimizer=optimizer_arguments(config), scheduler=scheduler_arguments(config),
        center_lr=config.train.optim.center_lr,
        grad_clip=config.train.grad_clip, seed=config.train.seed, flip_feature=config.model.with_flip_feature,
        max_rank=config.re_ranking.max_rank, num_query=num_query,
        metadata=checkpoint_metadata(config, num_classes, model.feat_dim),
        compile_model=config.train.compile, channels_last=config.train.channels_last)


def precision_for(requested: str, accelerator: str) -> str:
    """train.precision=auto: bf16-mixed on a GPU that supports it, 32 elsewhere."""
    if requested != "auto":
        return requested
    import torch

    if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32"


def resume_path(config: DictConfig, results_dir) -> Optional[str]:
    explicit = config.train.resume_training_checkpoint_path
    if explicit:
        return explicit
    latest = results_dir / "reid_model_latest.pth"
    return str(latest) if latest.is_file() else None
