"""The training objective: weighted sum of ID, triplet and center losses.

Mapping of TAO spec fields onto the constructor flags (see ``loss_components``, which implements it):

* ``dataset.sampler``: ``softmax`` -> ID loss only; ``triplet`` -> triplet loss only;
  ``softmax_triplet`` -> ID + triplet.
* ``model.metric_loss_type``: ``triplet`` -> the sampler decides; ``center`` -> the metric loss is the
  center loss (ID + center, no triplet, as reid-strong-baseline); ``triplet_center`` -> triplet + center.
* ``model.with_center_loss: True`` adds the center loss to whatever the above selected.
* The sampler wins over the metric type: with sampler ``softmax`` no triplet loss is used (its batches are
  not PK batches, so most anchors would have no positive); sampler ``triplet`` with metric ``center`` is
  rejected (only the center loss would remain).
* ``model.label_smooth`` -> ``label_smooth``; ``model.no_margin`` -> ``triplet_margin=None``, otherwise
  ``train.optim.triplet_loss_margin``; ``model.id_loss_weight``, ``model.triplet_loss_weight``,
  ``train.optim.center_loss_weight`` -> the weights.

Inputs follow BoT: the ID loss sees the classifier logits (after the BNNeck), triplet and center losses see
the global feature before the BNNeck.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from .center import CenterLoss, center_loss
from .cross_entropy import IdLoss
from .triplet import TripletLoss

SAMPLERS = ("softmax", "triplet", "softmax_triplet")
METRIC_LOSS_TYPES = ("triplet", "center", "triplet_center")


def loss_components(sampler: str, metric_loss_type: str, with_center_loss: bool
                    ) -> tuple[bool, bool, bool]:
    """(use_id, use_triplet, use_center) for the TAO fields, following the mapping in the module doc."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"dataset.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if metric_loss_type not in METRIC_LOSS_TYPES:
        raise ConfigError(f"model.metric_loss_type must be one of {', '.join(METRIC_LOSS_TYPES)}, "
                          f"got {metric_loss_type!r}")
    use_id = sampler in ("softmax", "softmax_triplet")
    use_triplet = sampler in ("triplet", "softmax_triplet") and metric_loss_type != "center"
    use_center = metric_loss_type in ("center", "triplet_center") or bool(with_center_loss)
    if not use_id and not use_triplet:
        # sampler triplet + metric center: only the center loss would remain, and alone it collapses.
        raise ConfigError("dataset.sampler 'triplet' with model.metric_loss_type 'center' leaves only the "
                          "center loss; use sampler softmax_triplet or metric_loss_type triplet_center")
    return use_id, use_triplet, use_center


class ReidLoss(nn.Module):
    """Weighted sum of the active losses.

    Args:
        num_classes: number of training identities (size of the center table).
        feat_dim: dimension of the features fed to triplet/center losses.
        label_smooth: label smoothing 0.1 in the ID loss.
        id_loss_weight, triplet_loss_weight, center_loss_weight: weights in the total.
        triplet_margin: triplet margin, or None for the soft margin.
        use_id, use_triplet, use_center: which losses are active (at least ID or triplet).

    Center gradients: the centers receive the gradient of the *unweighted* center loss, the features the
    weighted one. This is what BoT obtains by dividing the center gradients by ``center_loss_weight``
    before stepping the center optimiser; here it is built into the graph, so the engine just calls
    ``backward()`` on ``"loss"`` and steps both optimisers. It must NOT rescale the center gradients again.
    """

    def __init__(self, num_classes: int, feat_dim: int, label_smooth: bool = True,
                 id_loss_weight: float = 1.0, triplet_loss_weight: float = 1.0,
                 triplet_margin: float | None = 0.3, use_id: bool = True, use_triplet: bool = True,
                 use_center: bool = False, center_loss_weight: float = 0.0005):
        super().__init__()
        if not (use_id or use_triplet):
            raise ConfigError("no ID or triplet loss is active (the center loss alone collapses); set "
                              "dataset.sampler to softmax, triplet or softmax_triplet")
        for field, weight in (("model.id_loss_weight", id_loss_weight),
                              ("model.triplet_loss_weight", triplet_loss_weight),
                              ("train.optim.center_loss_weight", center_loss_weight)):
            if weight < 0:
                raise ConfigError(f"{field} must be >= 0, got {weight}")
        self.id_loss_weight = float(id_loss_weight)
        self.triplet_loss_weight = float(triplet_loss_weight)
        self.center_loss_weight = float(center_loss_weight)
        self.id_loss = IdLoss(label_smooth) if use_id else None
        self.triplet_loss = TripletLoss(triplet_margin) if use_triplet else None
        self.center_loss = CenterLoss(num_classes, feat_dim) if use_center else None

    def forward(self, logits: torch.Tensor | None, features: torch.Tensor, targets: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Losses for one batch.

        Returns a dict with "loss" (weighted total, fp32, to backpropagate) and the unweighted, detached
        component values for logging: "id_loss", "triplet_loss", "center_loss" (only the active ones).
        """
        parts: dict[str, torch.Tensor] = {}
        terms: list[torch.Tensor] = []
        if self.id_loss is not None:
            if logits is None:
                raise ValueError("the ID loss is active but the model returned no logits")
            value = self.id_loss(logits, targets)
            parts["id_loss"] = value.detach()
            terms.append(self.id_loss_weight * value)
        if self.triplet_loss is not None:
            value = self.triplet_loss(features, targets)
            parts["triplet_loss"] = value.detach()
            terms.append(self.triplet_loss_weight * value)
        if self.center_loss is not None:
            centers = self.center_loss.centers
            # Same value L twice; the first sends weight * dL/df to the features only, the second
            # dL/dc to the centers only (value cancelled, so the total is weight * L).
            for_features = center_loss(features, targets, centers.detach())
            for_centers = center_loss(features.detach(), targets, centers)
            parts["center_loss"] = for_centers.detach()
            terms.append(self.center_loss_weight * for_features + (for_centers - for_centers.detach()))
        return {"loss": torch.stack(terms).sum(), **parts}

    def center_parameters(self) -> list[nn.Parameter]:
        """The learnable centers (for their own SGD optimiser), or [] when the center loss is off."""
        return [self.center_loss.centers] if self.center_loss is not None else []
