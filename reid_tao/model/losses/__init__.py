"""Losses: ID (cross entropy, label smoothing), batch-hard triplet, center, the pseudo-label terms of domain
adaptation (cluster memory, camera proxies), and their weighted sum.

``LOSS_TERMS`` is the one table of loss terms: a term registered here can be selected by name, is summed by
``ReidLoss`` and is logged, monitored and reported as ``train_<name>_loss`` (see docs/contributing.md).
"""

from collections.abc import Mapping, Sequence

from reid_tao.model.losses.camera_proxy import CameraProxyLoss
from reid_tao.model.losses.center import CenterLoss
from reid_tao.model.losses.cluster_memory import ClusterMemoryLoss
from reid_tao.model.losses.combined import ReidLoss, value_name
from reid_tao.model.losses.cross_entropy import IdLoss
from reid_tao.model.losses.term import LossSettings, LossTerm, PseudoLabelTerm
from reid_tao.model.losses.triplet import TripletLoss

# term name -> the term's class (in summing order).
LOSS_TERMS: dict[str, type[LossTerm]] = {
    "id": IdLoss,
    "triplet": TripletLoss,
    "center": CenterLoss,
    "memory": ClusterMemoryLoss,
    "camera": CameraProxyLoss,
}
# model.id_loss_type -> the ID loss (TAO's margin heads are broken, bug B4, and not implemented).
ID_LOSSES = {"softmax": IdLoss}


def build_reid_loss(
    names: Sequence[str], settings: LossSettings, weights: Mapping[str, float] | None = None
) -> ReidLoss:
    """ReidLoss over the named terms of ``LOSS_TERMS`` (summed in the table's order)."""
    unknown = [name for name in names if name not in LOSS_TERMS]
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; known: {list(LOSS_TERMS)}")
    chosen = [name for name in LOSS_TERMS if name in names]
    return ReidLoss(
        {name: LOSS_TERMS[name].from_settings(settings) for name in chosen},
        {name: weight for name, weight in (weights or {}).items() if name in chosen},
    )


__all__ = [
    "CameraProxyLoss",
    "CenterLoss",
    "ClusterMemoryLoss",
    "ID_LOSSES",
    "IdLoss",
    "LOSS_TERMS",
    "LossSettings",
    "LossTerm",
    "PseudoLabelTerm",
    "ReidLoss",
    "TripletLoss",
    "build_reid_loss",
    "value_name",
]
