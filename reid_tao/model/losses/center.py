"""Center loss (Wen et al. 2016) as used by reid-strong-baseline: pulls features to a learnable
per-identity center.

loss = mean_i clamp(||f_i - c_{y_i}||^2, 1e-12, 1e12). The centers are an ``nn.Parameter`` that must be
stepped by its own optimiser (``engine.optim.build_center_optimizer``); TAO builds that optimiser but never
steps it (bug B2). Computed in fp32 with autocast disabled: under fp16 the squared distances of
2048-d features overflow, a crash peers' users report.
"""

import torch
from torch import nn

from reid_tao.model.losses.term import LossSettings, LossTerm

MIN_SQUARED_DISTANCE = 1e-12
MAX_SQUARED_DISTANCE = 1e12


def center_loss(features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """mean_i clamp(||features_i - centers[targets_i]||^2) in fp32 with autocast off.

    A function (not only the module) so callers can pass detached features or centers to route the
    gradient (see ``ReidLoss``).
    """
    if features.shape[-1] != centers.shape[-1]:
        raise ValueError(f"center loss expects features of dimension {centers.shape[-1]}, got {tuple(features.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        # Gather only the N needed centers instead of BoT's (N, num_classes) distance matrix.
        own_centers = centers.float().index_select(0, targets)
        squared = (features.float() - own_centers).pow(2).sum(dim=1)
        return squared.clamp(min=MIN_SQUARED_DISTANCE, max=MAX_SQUARED_DISTANCE).mean()


class CenterLoss(LossTerm):
    """Mean squared distance between each feature and the center of its identity.

    Args:
        num_classes: number of training identities.
        feat_dim: dimension of the features the loss is applied to.

    Center gradients: the centers receive the gradient of the *unweighted* loss, the features the weighted
    one (see :meth:`weighted`). This is what BoT obtains by dividing the center gradients by the weight
    before stepping the center optimiser; here it is built into the graph, so the engine just calls
    ``backward()`` on the total and steps both optimisers. It must NOT rescale the center gradients again.
    """

    standalone = False  # alone it collapses: every feature moves to its (moving) center
    weight_field = "train.optim.center_loss_weight"

    @classmethod
    def from_settings(cls, settings: LossSettings) -> "CenterLoss":
        return cls(settings.num_classes, settings.feat_dim)

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(f"num_classes and feat_dim must be >= 1, got {num_classes} and {feat_dim}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar fp32 loss for (N, feat_dim) ``features`` and (N,) integer ``targets``."""
        return center_loss(features, targets, self.centers)

    def value(self, logits, features, targets):
        return self(features, targets)

    def weighted(self, weight, logits, features, targets, cameras=None):
        # Same value L twice; the first sends weight * dL/df to the features only, the second dL/dc to the
        # centers only (value cancelled, so the total is weight * L).
        for_features = center_loss(features, targets, self.centers.detach())
        for_centers = center_loss(features.detach(), targets, self.centers)
        return weight * for_features + (for_centers - for_centers.detach()), for_centers.detach()

    def own_parameters(self):
        return [self.centers]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"
