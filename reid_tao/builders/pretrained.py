"""Initial weights of a new model, per model.pretrain_choice: ImageNet, a reid_tao/TAO checkpoint, or none."""

import logging

from omegaconf import DictConfig

from reid_tao.errors import DataError
from reid_tao.io.checkpoint_file import REID_TAO, TAO, CheckpointFile, read_checkpoint_file
from reid_tao.model import weights
from reid_tao.model.backbones import BACKBONES
from reid_tao.model.baseline import Baseline
from reid_tao.model.tao_baseline import TAO_RESNET_LAYERS, TAO_RESNET_WIDTH, tao_resnet_layers

log = logging.getLogger(__name__)


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
    _load_trained_weights(model, model_cfg, model_cfg.pretrained_model_path, "model.pretrained_model_path")


def load_adaptation_source(model: Baseline, model_cfg: DictConfig, path: str, with_classifier: bool = False) -> None:
    """adaptation.source_checkpoint: the model to adapt, loaded as model.pretrain_choice=self loads its file, but
    whole: the spec's model is the source's own (builders.checkpoints.adaptation_source_config), so every tensor
    but the classifier must load. with_classifier (a labelled source stream, one classifier row per source
    identity): the checkpoint's classifier rows too when it has as many (ready-made class centres, e.g. a
    Market model adapted with Market's training images as the source), else the classifier starts afresh."""
    checkpoint = _load_trained_weights(model, model_cfg, path, "adaptation.source_checkpoint", whole=True)
    if with_classifier:
        _load_classifier(model, checkpoint, path)


def _load_classifier(model: Baseline, checkpoint: CheckpointFile | None, path: str) -> None:
    rows = model.classifier.weight.shape[0]
    stored = checkpoint.model_state.get("classifier.weight") if checkpoint is not None else None
    if stored is not None and stored.shape == model.classifier.weight.shape:
        model.classifier.load_state_dict({"weight": stored})
        log.info(
            "adaptation.source_checkpoint: its %d classifier rows are the source identities' (as many as "
            "adaptation.source_dataset_dir holds): loaded",
            rows,
        )
        return
    held = f"{stored.shape[0]} classifier rows" if stored is not None and stored.dim() == 2 else "no classifier"
    log.info(
        "adaptation.source_checkpoint: %s holds %s for the %d identities of adaptation.source_dataset_dir; "
        "the classifier starts afresh",
        path,
        held,
        rows,
    )


def _stored_backbone(checkpoint: CheckpointFile) -> str | None:
    """model.backbone of a reid_tao checkpoint's stored config, read as data (None when absent or not text)."""
    stored = checkpoint.metadata
    config = stored.get("config") if isinstance(stored, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    backbone = model.get("backbone") if isinstance(model, dict) else None
    return backbone if isinstance(backbone, str) else None


def _load_trained_weights(
    model: Baseline, model_cfg: DictConfig, path: str, field: str, whole: bool = False
) -> CheckpointFile | None:
    """Load ``path`` into ``model``; returns the reid_tao checkpoint read (None for any other file)."""
    checkpoint = read_checkpoint_file(path, field, trust=model_cfg.trust_weights_file)
    if checkpoint.kind != REID_TAO:
        log.info("%s: %s is not a reid_tao checkpoint; reading it as backbone weights", field, path)
        if checkpoint.kind == TAO:
            _check_tao_backbone_fits(checkpoint, model_cfg, field, path)
        weights.load_backbone_weights(model.backbone, checkpoint.tensors)  # logs its report, fails when poor
        return None
    stored = _stored_backbone(checkpoint)
    if stored is not None and stored != model_cfg.backbone:
        # e.g. resnet_34 under resnet_18: the first 120 names match and the rest would be dropped unsaid
        raise DataError(
            f"{field}: {path} holds a {stored} model but model.backbone={model_cfg.backbone} here; set "
            f"model.backbone={stored} to start from it"
        )
    state = checkpoint.model_state
    own = model.state_dict()
    transferable = {
        k: v for k, v in state.items() if not k.startswith("classifier.") and k in own and own[k].shape == v.shape
    }
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    loaded_backbone = sum(1 for k in backbone_keys if k in transferable)
    unused = [k for k in state if not k.startswith("classifier.") and k not in transferable]
    unused_backbone = [k for k in unused if k.startswith("backbone.")]
    if unused_backbone:
        source_backbone = sum(1 for k in state if k.startswith("backbone."))
        raise DataError(
            f"{field}: {path}: {len(unused_backbone)} of its {source_backbone} backbone tensors have no "
            f"place in this model (e.g. {unused_backbone[0]}); was it trained with the same "
            "model.backbone?"
        )
    if loaded_backbone < 0.9 * len(backbone_keys):
        raise DataError(
            f"{field}: {path} matches only {loaded_backbone}/{len(backbone_keys)} "
            "backbone tensors of this model; was it trained with the same model.backbone?"
        )
    fresh = [k for k in own if not k.startswith(("backbone.", "classifier.")) and k not in transferable]
    if whole and (unused or fresh):
        raise DataError(
            f"{field}: {path}: its weights do not fit the model its config describes (e.g. "
            f"{(unused or fresh)[0]}); is the file complete?"
        )
    model.load_state_dict(transferable, strict=False)
    differs = (
        ""
        if not (unused or fresh)
        else (
            f"; {len(unused)} of its head tensors do not fit this model's model.feat_dim / neck / gem_pooling (e.g. "
            f"{(unused or ['-'])[0]}) and {len(fresh)} of this model's start afresh"
        )
    )
    log.info(
        "%s: loaded %d/%d backbone tensors and %d head tensors from %s%s",
        field,
        loaded_backbone,
        len(backbone_keys),
        len(transferable) - loaded_backbone,
        path,
        differs,
    )
    return checkpoint


def _check_tao_backbone_fits(
    checkpoint: CheckpointFile, model_cfg: DictConfig, field: str = "model.pretrained_model_path", path: str = ""
) -> None:
    """TAO's ResNets are Bottleneck nets for every depth; say so when ours is not, and what differs when it is."""
    state = checkpoint.model_state
    if "base.conv1.weight" not in state:
        return  # a TAO Swin: the weight report tells how much matched
    layers = tao_resnet_layers(state)
    # Our 2048-wide ResNets are Bottleneck nets with TAO's block counts; resnet_18/34 are BasicBlock nets.
    fitting = [
        name
        for name, entry in BACKBONES.items()
        if entry.family == "ResNet"
        and entry.feature_width == TAO_RESNET_WIDTH
        and TAO_RESNET_LAYERS.get(name) == layers
    ]
    if model_cfg.backbone not in fitting:
        ours = BACKBONES[model_cfg.backbone]
        kind = (
            ("BasicBlock" if ours.feature_width != TAO_RESNET_WIDTH else "other block counts")
            if ours.family == "ResNet"
            else ours.family
        )
        advice = (
            f"use model.backbone={fitting[0]}, which has the same layout"
            if fitting
            else "no reid_tao backbone has this layout; use model.pretrain_choice=imagenet"
        )
        raise DataError(
            f"{field}: {path or model_cfg.pretrained_model_path} is a TAO ResNet with "
            f"Bottleneck blocks {list(layers)} (TAO builds every resnet_* that way), but "
            f"model.backbone={model_cfg.backbone} here has {kind}; {advice}"
        )
    log.info(
        "%s: TAO ResNet weights; this %s has a ReLU after the stem BatchNorm (TAO "
        "has none) and no base.feature 1x1 convolution, so features differ until fine-tuned",
        field,
        model_cfg.backbone,
    )


def _random_init(model: Baseline, model_cfg: DictConfig) -> None:
    log.info("model.pretrain_choice='': training %s from random initialisation", model_cfg.backbone)


# model.pretrain_choice -> how the new model's weights are initialised.
PRETRAINED_LOADERS = {"imagenet": _load_imagenet, "self": _load_self, "": _random_init}
