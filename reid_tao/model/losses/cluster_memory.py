"""Cluster memory and its contrastive loss (Cluster Contrast, Dai et al. 2021), for training on pseudo labels.

The memory holds one L2-normalised centroid per pseudo identity (cluster). A batch feature is classified
against all centroids by a temperature-scaled softmax over cosine similarities (an InfoNCE loss with the
own cluster's centroid as the positive), and after the step each centroid moves towards the batch features
of its cluster: ``c <- momentum * c + (1 - momentum) * f``, renormalised. The centroids are set anew after
every clustering (:meth:`ClusterMemoryLoss.reset`); they are state, not parameters (no optimiser steps them)
and not saved in checkpoints (the next clustering rebuilds them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemoryLoss(nn.Module):
    """Args:
        feat_dim: width of the features.
        temperature: softmax temperature over the cosine similarities (Cluster Contrast: 0.05).
        momentum: share of the old centroid kept in each update (Cluster Contrast: 0.1 to 0.2).
    """

    def __init__(self, feat_dim: int, temperature: float = 0.05, momentum: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.feat_dim, self.temperature, self.momentum = feat_dim, float(temperature), float(momentum)
        self.register_buffer("centroids", torch.zeros(0, feat_dim), persistent=False)

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    @torch.no_grad()
    def reset(self, centroids: torch.Tensor) -> None:
        """Replace the memory by ``centroids`` (num_clusters, feat_dim), e.g. the mean feature of each cluster."""
        if centroids.dim() != 2 or centroids.shape[1] != self.feat_dim:
            raise ValueError(f"centroids must have shape (clusters, {self.feat_dim}), got {tuple(centroids.shape)}")
        self.centroids = F.normalize(centroids.float(), dim=1).to(self.centroids.device)

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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
            self._update(normalised.detach(), targets)
        return loss

    @torch.no_grad()
    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """One momentum step per cluster with the mean of its batch features (every PK batch holds each of
        its clusters K times; averaging them first makes the step independent of K)."""
        centroids = self.centroids
        if centroids.device != features.device:
            centroids = centroids.to(features.device)
        sums = torch.zeros_like(centroids).index_add_(0, targets, features)
        counts = torch.bincount(targets, minlength=centroids.shape[0]).to(features.dtype)
        present = counts > 0
        means = sums[present] / counts[present, None]
        centroids[present] = F.normalize(self.momentum * centroids[present] + (1 - self.momentum) * means, dim=1)
        self.centroids = centroids


class MemoryLossSum(nn.Module):
    """The adaptation objective: ``memory_weight`` x cluster-memory loss + the metric losses of ``metric``
    (a :class:`~reid_tao.model.losses.ReidLoss` without ID loss, e.g. the batch-hard triplet loss on the
    pseudo labels), or the memory loss alone when ``metric`` is None. Same interface as ReidLoss."""

    needs_logits = False  # pseudo identities change with every clustering: no classifier is trained

    def __init__(self, memory: ClusterMemoryLoss, memory_weight: float = 1.0, metric: nn.Module | None = None):
        super().__init__()
        if memory_weight < 0:
            raise ValueError(f"memory_weight must be >= 0, got {memory_weight}")
        if metric is not None and metric.needs_logits:
            raise ValueError("the metric losses must not include an ID loss (pseudo identities change)")
        self.memory, self.memory_weight, self.metric = memory, float(memory_weight), metric

    def forward(self, logits: torch.Tensor | None, features: torch.Tensor, targets: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        value = self.memory(features, targets)
        parts = {"memory_loss": value.detach()}
        total = self.memory_weight * value
        if self.metric is not None:
            metric = self.metric(logits, features, targets)
            total = total + metric.pop("loss")
            parts.update(metric)
        return {"loss": total, **parts}

    def center_parameters(self) -> list[nn.Parameter]:
        return self.metric.center_parameters() if self.metric is not None else []
