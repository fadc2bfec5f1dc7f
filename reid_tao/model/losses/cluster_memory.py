"""Cluster memory and its contrastive loss (Cluster Contrast, Dai et al. 2021), for training on pseudo labels.

The memory holds one L2-normalised centroid per pseudo identity (cluster). A batch feature is classified
against all centroids by a temperature-scaled softmax over cosine similarities (an InfoNCE loss with the
own cluster's centroid as the positive), and after the step each centroid moves towards the batch features
of its cluster: ``c <- momentum * c + (1 - momentum) * f``, renormalised. The centroids are set anew after
every clustering (:meth:`ClusterMemoryLoss.reset_pseudo_labels`); they are state, not parameters (no optimiser
steps them) and not saved in checkpoints (the next clustering rebuilds them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid_tao.model.losses.term import LossSettings, PseudoLabelTerm


def momentum_update(memory: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """Move each memory row named in ``rows`` towards the mean of its batch features, in place:
    ``m <- momentum * m + (1 - momentum) * mean``, renormalised. Averaging a row's features first makes the step
    independent of how many times the batch holds it."""
    sums = torch.zeros_like(memory).index_add_(0, rows, features)
    counts = torch.bincount(rows, minlength=memory.shape[0]).to(features.dtype)
    present = counts > 0
    means = sums[present] / counts[present, None]
    memory[present] = F.normalize(momentum * memory[present] + (1 - momentum) * means, dim=1)


def label_means(features: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """(count, D) L2-normalised mean of the normalised features of each label 0..count-1 (labels < 0 ignored)."""
    normalised = F.normalize(features.float(), dim=1)
    kept = labels >= 0
    sums = torch.zeros(count, normalised.shape[1], device=normalised.device)
    sums.index_add_(0, labels[kept], normalised[kept])
    return F.normalize(sums, dim=1)


class ClusterMemoryLoss(PseudoLabelTerm):
    """Args:
    feat_dim: width of the features.
    temperature: softmax temperature over the cosine similarities (Cluster Contrast: 0.05).
    momentum: share of the old centroid kept in each update (Cluster Contrast: 0.1 to 0.2).
    """

    weight_field = "adaptation.memory_loss_weight"

    def __init__(self, feat_dim: int, temperature: float = 0.05, momentum: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.feat_dim, self.temperature, self.momentum = feat_dim, float(temperature), float(momentum)
        self.register_buffer("centroids", torch.zeros(0, feat_dim), persistent=False)

    @classmethod
    def from_settings(cls, settings: LossSettings) -> ClusterMemoryLoss:
        return cls(settings.feat_dim, temperature=settings.memory_temperature, momentum=settings.memory_momentum)

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    @torch.no_grad()
    def reset(self, centroids: torch.Tensor) -> None:
        """Replace the memory by ``centroids`` (num_clusters, feat_dim), e.g. the mean feature of each cluster."""
        if centroids.dim() != 2 or centroids.shape[1] != self.feat_dim:
            raise ValueError(f"centroids must have shape (clusters, {self.feat_dim}), got {tuple(centroids.shape)}")
        self.centroids = F.normalize(centroids.float(), dim=1).to(self.centroids.device)

    @torch.no_grad()
    def reset_pseudo_labels(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        self.reset(label_means(features, labels.to(features.device), int(labels.max()) + 1))

    def value(self, logits, features: torch.Tensor, targets: torch.Tensor, cameras=None) -> torch.Tensor:
        """Contrastive loss of ``features`` (batch, feat_dim) against the memory; ``targets`` are cluster
        indices. Updates the memory with the batch afterwards (training mode only)."""
        if self.num_clusters == 0:
            raise RuntimeError("the cluster memory is empty: call reset() with the cluster centroids first")
        normalised = F.normalize(features.float(), dim=1)
        centroids = self.centroids.to(normalised.device)
        # a copy in the graph: the in-place update below must not touch what backward needs
        logits = normalised @ centroids.clone().T / self.temperature
        loss = F.cross_entropy(logits, targets)
        if self.training:
            with torch.no_grad():
                momentum_update(centroids, targets, normalised.detach(), self.momentum)
            self.centroids = centroids
        return loss
