"""The adaptation callbacks built from the adaptation section of the spec."""
from typing import Optional

from omegaconf import DictConfig

from ..engine.adaptation import PseudoLabelCallback, SourceInterpolation
from ..engine.module import ReidModule
from .training import ADAPTATION_NUM_CLASSES, build_model


def pseudo_label_callback(config: DictConfig, module: ReidModule) -> PseudoLabelCallback:
    adaptation = config.adaptation
    return PseudoLabelCallback(module.loss.pseudo_label_terms(), interval=adaptation.cluster_interval,
                               eps=None if adaptation.eps == "auto" else float(adaptation.eps),
                               eps_share=adaptation.eps_share, min_samples=adaptation.min_samples,
                               k1=adaptation.k1, k2=adaptation.k2, outliers=adaptation.outliers,
                               batch_size=config.dataset.val_batch_size, num_workers=config.dataset.num_workers,
                               camera_centring=adaptation.camera_centring,
                               target_batch_norm=adaptation.target_batch_norm)


def source_interpolation(config: DictConfig, module: ReidModule, resuming: bool) -> Optional[SourceInterpolation]:
    """adaptation.source_weight > 0: the callback, with the source weights (a resumed run's module holds the
    checkpoint's, so the source is loaded again)."""
    weight = config.adaptation.source_weight
    if weight <= 0:
        return None
    source = build_model(config, ADAPTATION_NUM_CLASSES) if resuming else module.model
    return SourceInterpolation(source.state_dict(), weight, batch_size=config.dataset.val_batch_size,
                               num_workers=config.dataset.num_workers)


def adaptation_callbacks(config: DictConfig, module: ReidModule, resuming: bool) -> list:
    """The callbacks adaptation.enable adds to training (none without it)."""
    if not config.adaptation.enable:
        return []
    interpolation = source_interpolation(config, module, resuming)
    return [pseudo_label_callback(config, module)] + ([interpolation] if interpolation else [])
