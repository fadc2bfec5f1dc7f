"""Batch-hard triplet loss (Hermans et al. 2017, as used by reid-strong-baseline).

For every anchor in the batch: hardest positive = largest Euclidean distance to another image of the same
identity, hardest negative = smallest distance to an image of another identity. With a ``margin`` the
loss is relu(d_ap - d_an + margin) (what ``nn.MarginRankingLoss`` computes); with ``margin=None`` it is
the soft margin softplus(d_ap - d_an) = log(1 + exp(d_ap - d_an)).

Everything is computed in fp32 with autocast disabled, on the device of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid_tao.model.losses.term import LossSettings, LossTerm

# Squared distances are clamped to this before the square root: sqrt has an infinite slope at 0.
SQUARED_DISTANCE_EPS = 1e-12


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean distances (not squared), safe to backpropagate through.

    Uses ||a||^2 + ||b||^2 - 2 a.b (one matmul, no (N, N, D) tensor). The diagonal is set to exactly
    zero because the expansion leaves rounding noise there.
    """
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (features @ features.t())
    squared = squared.clamp(min=SQUARED_DISTANCE_EPS).sqrt()
    eye = torch.eye(features.shape[0], dtype=torch.bool, device=features.device)
    return squared.masked_fill(eye, 0.0)


def hard_example_mining(
    distances: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hardest positive and negative distance per anchor, vectorised.

    Returns (d_ap, d_an, has_negative). An anchor without another image of its identity gets d_ap = 0;
    an anchor without any other identity in the batch gets has_negative False (its d_an is +inf).
    """
    same_id = targets[:, None] == targets[None, :]
    eye = torch.eye(targets.shape[0], dtype=torch.bool, device=targets.device)
    positives = same_id & ~eye
    # Distances are >= 0, so filling non-positives with 0 makes "no positive" give d_ap = 0.
    d_ap = distances.masked_fill(~positives, 0.0).amax(dim=1)
    d_an = distances.masked_fill(same_id, float("inf")).amin(dim=1)
    has_negative = (~same_id).any(dim=1)
    return d_ap, d_an, has_negative


class TripletLoss(LossTerm):
    """Batch-hard triplet loss on global features.

    Args:
        margin: the triplet margin (TAO ``train.optim.triplet_loss_margin``, default 0.3), or None for
            the soft-margin variant (TAO ``model.no_margin: True``).
    """

    weight_field = "model.triplet_loss_weight"

    @classmethod
    def from_settings(cls, settings: LossSettings) -> TripletLoss:
        return cls(settings.triplet_margin)

    def __init__(self, margin: float | None = 0.3):
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"margin must be >= 0 (or None for the soft margin), got {margin}")
        self.margin = None if margin is None else float(margin)

    def forward(self, features: torch.Tensor, targets: torch.Tensor, return_distances: bool = False):
        """Mean triplet loss over anchors that have a negative in the batch.

        Args:
            features: (N, D) features (any float dtype; computed in fp32).
            targets: (N,) integer identity labels.
            return_distances: also return the per-anchor hardest d_ap and d_an (detached), for logging
                (every anchor: d_an is +inf for an anchor without a negative).

        Returns:
            The scalar fp32 loss, or (loss, d_ap, d_an) when ``return_distances``. A batch with a single
            identity has no triplets: the loss is 0 (still connected to the graph).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            distances = pairwise_euclidean(features.float())
            d_ap, d_an, has_negative = hard_example_mining(distances, targets)
            # A masked mean, not d_ap[has_negative]: boolean indexing calls nonzero, a host-device sync
            # every step. Anchors without a negative (d_an = inf) count 0; a batch of one identity gives
            # 0 / 1 = 0, still connected to the graph through the where.
            gap = torch.where(has_negative, d_ap - d_an, torch.zeros_like(d_ap))
            per_anchor = F.softplus(gap) if self.margin is None else F.relu(gap + self.margin)
            per_anchor = torch.where(has_negative, per_anchor, torch.zeros_like(per_anchor))
            loss = per_anchor.sum() / has_negative.sum().clamp(min=1)
        if return_distances:
            return loss, d_ap.detach(), d_an.detach()
        return loss

    def value(self, logits, features, targets):
        return self(features, targets)

    def extra_repr(self) -> str:
        return "soft_margin" if self.margin is None else f"margin={self.margin}"
