"""The training objective: weighted sum of ID, triplet and center losses.

Which losses are active is decided by the caller (``reid_tao.build`` maps the spec's sampler and metric
loss type onto ``use_id`` / ``use_triplet`` / ``use_center``). Inputs follow BoT: the ID loss sees the
classifier logits (after the BNNeck), triplet and center losses see the global feature before the BNNeck.
"""
from __future__ import annotations

import torch
from torch import nn

from .center import CenterLoss, center_loss
from .cross_entropy import IdLoss
from .triplet import TripletLoss


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
            raise ValueError("use_id or use_triplet must be set (the center loss alone collapses)")
        for name, weight in (("id_loss_weight", id_loss_weight), ("triplet_loss_weight", triplet_loss_weight),
                             ("center_loss_weight", center_loss_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
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
