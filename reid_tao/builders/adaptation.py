"""The adaptation callbacks built from the adaptation section of the spec."""

from omegaconf import DictConfig

from reid_tao.builders.training import build_model
from reid_tao.engine.adaptation import FinalWeights, MeanTeacher, PseudoLabelCallback
from reid_tao.engine.module import ReidModule


def pseudo_label_callback(
    config: DictConfig, module: ReidModule, teacher: MeanTeacher | None = None
) -> PseudoLabelCallback:
    adaptation = config.adaptation
    return PseudoLabelCallback(
        module.loss.pseudo_label_terms(),
        interval=adaptation.cluster_interval,
        eps=None if adaptation.eps == "auto" else float(adaptation.eps),
        eps_share=adaptation.eps_share,
        min_samples=adaptation.min_samples,
        k1=adaptation.k1,
        k2=adaptation.k2,
        outliers=adaptation.outliers,
        batch_size=config.dataset.val_batch_size,
        num_workers=config.dataset.num_workers,
        camera_centring=adaptation.camera_centring,
        same_camera_penalty=adaptation.same_camera_penalty,
        target_batch_norm=adaptation.target_batch_norm,
        teacher=teacher,
        tracklets=adaptation.tracklets == "auto",
    )


def final_weights(
    config: DictConfig, module: ReidModule, resuming: bool, teacher: MeanTeacher | None = None
) -> FinalWeights:
    """The run's last step sets the teacher's weights, blends in the source's (adaptation.source_weight > 0: the
    source is loaded again when resuming, since the module then holds the checkpoint's) and measures the
    batch-norm statistics on the training images (adaptation.target_batch_norm)."""
    weight = config.adaptation.source_weight
    source = None
    if weight > 0:
        rows = module.model.classifier.out_features  # (one per source identity with a source stream)
        source = (build_model(config, rows) if resuming else module.model).state_dict()
    return FinalWeights(
        source,
        weight,
        teacher=teacher,
        measure_statistics=config.adaptation.target_batch_norm,
        batch_size=config.dataset.val_batch_size,
        num_workers=config.dataset.num_workers,
    )


def adaptation_callbacks(config: DictConfig, module: ReidModule, resuming: bool) -> list:
    """The callbacks adaptation.enable adds to training (none without it), in the order their hooks must run."""
    if not config.adaptation.enable:
        return []
    momentum = config.adaptation.teacher_momentum
    teacher = MeanTeacher(momentum) if momentum > 0 else None
    return [
        *([teacher] if teacher else []),
        pseudo_label_callback(config, module, teacher),
        final_weights(config, module, resuming, teacher),
    ]
