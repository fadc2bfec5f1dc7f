"""Pseudo identities for unlabeled images: DBSCAN over k-reciprocal Jaccard distances.

As in the clustering-based domain adaptation methods (SpCL, Cluster Contrast): the Jaccard distance of
k-reciprocal neighbour sets is far more reliable than the plain feature distance, and DBSCAN (scikit-learn, on
the precomputed distances) needs no number of identities and leaves images that belong to no dense cluster out
as outliers. The distances are a sparse graph (:func:`~reid_tao.evaluation.rerank.jaccard_graph`): only the
pairs within the DBSCAN radius are stored, so memory grows with N, not N^2 (the time still does: the exact
nearest neighbours of every image).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix, triu
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from reid_tao.evaluation.rerank import jaccard_graph


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


def auto_eps(graph: csr_matrix, share: float) -> float:
    """MMT's rule (Ge et al. 2020) for the DBSCAN radius: the mean of the smallest ``share`` of the pairwise
    distances (each pair once, no image with itself), from a :func:`distance_graph` whose pairs not stored are
    1 apart. ``share`` is about the share of pairs that show one person (images per person / images), so the
    radius sits at the distances of the likely matches."""
    count = auto_eps_pairs(graph.shape[0], share)
    stored = triu(graph, k=1).data
    if stored.size < count:  # the pairs not stored are at distance 1
        stored = np.concatenate([stored, np.ones(count - stored.size)])
    # summed in float64 in sorted order: the same radius from any graph that holds these distances
    return float(np.sort(np.partition(stored, count - 1)[:count]).astype(np.float64).mean())


def auto_eps_pairs(size: int, share: float) -> int:
    """How many of the smallest distances among ``size`` images :func:`auto_eps` averages: the graph it reads
    needs no pair farther than these (``distance_graph(..., nearest_pairs=auto_eps_pairs(N, share))``)."""
    pairs = size * (size - 1) // 2
    return min(max(int(round(share * pairs)), 1), max(pairs, 1))


def cluster_features(
    features: torch.Tensor,
    eps: float | None = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    cameras: torch.Tensor | None = None,
    eps_share: float = 0.0016,
    centring: bool = True,
    camera_penalty: float = 0.0,
) -> Clustering:
    """Cluster (N, D) features: :func:`dbscan_labels` of their :func:`distance_graph` (the pairs within
    ``eps``; eps None: :func:`auto_eps`, from the graph up to the pairs it averages); ``cameras``, ``centring``
    and ``camera_penalty`` as there. The centroids are means of the features themselves, not of the
    camera-centred ones (the memory compares them with the model's output).

    Memory: the graph's stored pairs (8 bytes each, a few dozen per image at a useful eps) and DBSCAN's copies
    of them, besides the nearest-neighbour search's blocks (see :func:`~reid_tao.evaluation.rerank.re_ranking`):
    measured in docs/benchmarks.md."""
    graph_args = dict(k1=k1, k2=k2, cameras=cameras, centring=centring, camera_penalty=camera_penalty)
    if eps is None:  # the graph up to the pairs auto_eps averages: the radius is at most their largest distance
        graph = distance_graph(features, nearest_pairs=auto_eps_pairs(features.shape[0], eps_share), **graph_args)
        eps = auto_eps(graph, eps_share)
    else:
        graph = distance_graph(features, max_distance=min(eps, 1.0), **graph_args)
    labels = dbscan_labels(graph, eps=eps, min_samples=min_samples)
    del graph
    normalised = F.normalize(features.float(), dim=1)
    num_clusters = int(labels.max()) + 1 if labels.size else 0
    index = torch.as_tensor(labels, device=normalised.device)
    kept = index >= 0
    sums = torch.zeros(num_clusters, normalised.shape[1], device=normalised.device)
    sums.index_add_(0, index[kept], normalised[kept])
    return Clustering(labels=labels, centroids=F.normalize(sums, dim=1), eps=float(eps))


def distance_graph(
    features: torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    cameras: torch.Tensor | None = None,
    max_distance: float = 1.0,
    nearest_pairs: int | None = None,
    centring: bool = True,
    camera_penalty: float = 0.0,
) -> csr_matrix:
    """The k-reciprocal Jaccard distances :func:`cluster_features` clusters, as the sparse (N, N) graph of
    :func:`~reid_tao.evaluation.rerank.jaccard_graph` (pairs at most ``max_distance`` apart, and with
    ``nearest_pairs`` no farther than the nearest_pairs-th closest pair; every other pair is farther, at most 1)
    of the L2-normalised features. With ``cameras`` (N camera numbers) from two or more cameras: camera-centred
    (:func:`camera_centred`) unless ``centring`` is false, and ``camera_penalty`` added to the squared distance
    of two images from one camera (their likeness in light and background is not evidence of one person)."""
    clustered = F.normalize(features.float(), dim=1)
    several = cameras is not None and torch.unique(cameras).numel() > 1
    if cameras is not None and centring:
        clustered = camera_centred(clustered, cameras)
    return jaccard_graph(
        clustered,
        k1=k1,
        k2=k2,
        max_distance=max_distance,
        nearest_pairs=nearest_pairs,
        cameras=cameras if several else None,
        camera_penalty=camera_penalty if several else 0.0,
    )


def dbscan_labels(graph: csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn's DBSCAN on a Jaccard distance graph from :func:`distance_graph` (stored at least up to
    ``eps``): cluster index per image, 0.., or -1 for an outlier. Equal to DBSCAN on the dense distances: a pair
    that is not stored is farther than the graph's ``max_distance`` and, when ``eps`` >= 1, no pair is farther
    than ``eps``."""
    size = graph.shape[0]
    if size == 0:
        return np.zeros(0, dtype=np.intp)
    if eps >= 1.0:  # a Jaccard distance is at most 1: every image is every other's neighbour
        return np.full(size, 0 if size >= min_samples else -1, dtype=np.intp)
    if graph.nnz and graph.data.max() > eps:  # keep what DBSCAN uses only: its copies of the graph shrink
        close = graph.data <= eps
        indptr = np.concatenate([[0], np.cumsum(close)])[graph.indptr]
        graph = csr_matrix((graph.data[close], graph.indices[close], indptr), shape=graph.shape)
    # scikit-learn takes eps > 0 only: the smallest positive double keeps "distance <= 0" for eps 0 (the graph
    # holds float32, none of which lies between them)
    eps = max(float(eps), float(np.nextafter(0.0, 1.0)))
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)


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
