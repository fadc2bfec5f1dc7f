"""Pseudo identities for unlabeled images: DBSCAN over k-reciprocal Jaccard distances.

As in the clustering-based domain adaptation methods (SpCL, Cluster Contrast): the Jaccard distance of
k-reciprocal neighbour sets (:func:`~reid_tao.evaluation.rerank.jaccard_distance`, sparse and blocked) is far
more reliable than the plain feature distance, and DBSCAN (scikit-learn, on the precomputed distances) needs
no number of identities and leaves images that belong to no dense cluster out as outliers.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from .rerank import jaccard_distance


class Clustering(NamedTuple):
    labels: np.ndarray  # cluster index per image, 0..clusters-1, or -1 for an outlier
    centroids: torch.Tensor  # (clusters, D) L2-normalised mean of each cluster's normalised features
    eps: float  # the DBSCAN radius used

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def camera_centred(normalised: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Subtract each camera's mean from its images' (N, D) L2-normalised features, then renormalise: what all of
    a camera's images share (its light, colour cast, background) no longer pulls them together, so people seen by
    several cameras are less often split into one cluster per camera."""
    _, index = torch.unique(cameras.to(normalised.device), return_inverse=True)
    sums = torch.zeros(int(index.max()) + 1, normalised.shape[1], device=normalised.device)
    sums.index_add_(0, index, normalised)
    counts = torch.bincount(index).to(normalised.dtype)
    return F.normalize(normalised - (sums / counts[:, None])[index], dim=1)


def auto_eps(distance: np.ndarray, share: float) -> float:
    """MMT's rule (Ge et al. 2020) for the DBSCAN radius: the mean of the smallest ``share`` of the pairwise
    distances (each pair once, no image with itself). ``share`` is about the share of pairs that show one person
    (images per person / images), so the radius sits at the distances of the likely matches."""
    n = distance.shape[0]
    upper = distance[np.triu_indices(n, k=1)]
    count = min(max(int(round(share * upper.size)), 1), upper.size)
    return float(np.partition(upper, count - 1)[:count].mean())


def cluster_features(features: torch.Tensor, eps: Optional[float] = 0.6, min_samples: int = 4, k1: int = 30,
                     k2: int = 6, cameras: Optional[torch.Tensor] = None, eps_share: float = 0.0016) -> Clustering:
    """Cluster (N, D) features; distances and DBSCAN as described in the module docstring. With ``cameras``
    (N camera numbers) the distances are computed on :func:`camera_centred` features; the centroids stay means
    of the features themselves (the memory compares them with the model's output). eps None: :func:`auto_eps`.

    Memory: the (N, N) float32 distance matrix (4 N^2 bytes: 100 MB for 5,000 images, 1.6 GB for 20,000)
    and what DBSCAN keeps of it (the neighbours within eps)."""
    normalised = F.normalize(features.float(), dim=1)
    clustered = normalised if cameras is None else camera_centred(normalised, cameras)
    distance = jaccard_distance(clustered, k1=k1, k2=k2).clamp_(min=0.0).cpu().numpy()
    if eps is None:
        eps = auto_eps(distance, eps_share)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distance)
    del distance
    num_clusters = int(labels.max()) + 1 if labels.size else 0
    index = torch.as_tensor(labels, device=normalised.device)
    kept = index >= 0
    sums = torch.zeros(num_clusters, normalised.shape[1], device=normalised.device)
    sums.index_add_(0, index[kept], normalised[kept])
    return Clustering(labels=labels, centroids=F.normalize(sums, dim=1), eps=float(eps))


def purity(labels: np.ndarray, identities: np.ndarray) -> float:
    """Share of the clustered images (outliers excluded) whose cluster's majority identity is their own."""
    kept = labels >= 0
    if not kept.any():
        return 0.0
    pairs = np.stack([labels[kept], identities[kept]], axis=1)
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    cluster_of = np.unique(pairs, axis=0)[:, 0]
    majority = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    np.maximum.at(majority, cluster_of, counts)
    return float(majority.sum() / kept.sum())


def agreement(labels: np.ndarray, identities: np.ndarray) -> float:
    """Adjusted Rand index of the clusters and the identities, each outlier its own cluster: 1 when they agree,
    about 0 for chance. Unlike :func:`purity` it also counts people split over several clusters (or left out),
    so a radius too small to merge anyone does not score best."""
    labels = np.asarray(labels).copy()
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return float(adjusted_rand_score(identities, labels))
