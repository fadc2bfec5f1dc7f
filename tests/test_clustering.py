"""Clustering from the sparse Jaccard graph: the same pseudo labels as DBSCAN on the dense (N, N) distances."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from sklearn.cluster import DBSCAN

from reid_tao.evaluation.clustering import (
    agreement,
    camera_centred,
    cluster_features,
    dbscan_labels,
    distance_graph,
)
from reid_tao.evaluation.rerank import jaccard_distance, jaccard_graph


def dense_distances(features, k1, k2, cameras=None) -> np.ndarray:
    """What cluster_features clustered before the sparse graph: the dense (N, N) Jaccard distances."""
    normalised = F.normalize(features.float(), dim=1)
    clustered = normalised if cameras is None else camera_centred(normalised, cameras)
    return jaccard_distance(clustered, k1=k1, k2=k2).clamp_(min=0.0).numpy()


def dense_labels(distances: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    eps = max(eps, np.nextafter(0.0, 1.0))  # scikit-learn's eps > 0: "distance <= 0" for 0
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances)


def same_partition(labels: np.ndarray, expected: np.ndarray) -> bool:
    """The same outliers, and clusters equal up to a renumbering."""
    if not np.array_equal(labels < 0, expected < 0):
        return False
    clustered = labels >= 0
    pairs = np.unique(np.stack([labels[clustered], expected[clustered]]), axis=1)
    return pairs.shape[1] == len(np.unique(labels[clustered])) == len(np.unique(expected[clustered]))


def people(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """24 people x 6 images over 3 cameras, loose enough that eps decides who merges, 12 strays and 3 twins
    (an image twice)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(24, 32, generator=generator)
    looks = 0.8 * torch.randn(3, 32, generator=generator)
    identities = torch.arange(24).repeat_interleave(6)
    cameras = torch.randint(0, 3, (len(identities) + 12,), generator=generator)
    features = torch.cat([centres[identities], torch.zeros(12, 32)]) + looks[cameras]
    features = features + 0.9 * torch.randn(features.shape, generator=generator)
    return torch.cat([features, features[:3]]), torch.cat([cameras, cameras[:3]])


@pytest.mark.parametrize("with_cameras", [False, True])
def test_sparse_clustering_equals_dense_clustering(with_cameras):
    features, cameras = people(seed=0)
    cameras = cameras if with_cameras else None
    cluster_counts = set()
    for k1, k2 in [(20, 6), (8, 1)]:
        dense = dense_distances(features, k1, k2, cameras)
        graph = distance_graph(features, k1=k1, k2=k2, cameras=cameras)  # every pair closer than 1
        for eps in [1e-6, 0.3, 0.5, 0.7, 0.9, 1.0]:
            for min_samples in [1, 2, 4, 8]:
                labels, expected = dbscan_labels(graph, eps, min_samples), dense_labels(dense, eps, min_samples)
                assert same_partition(labels, expected), (k1, k2, eps, min_samples)
                cluster_counts.add(labels.max() + 1)
        for eps, min_samples in [(0.5, 4), (0.7, 2)]:  # the whole function, its graph cut at eps
            result = cluster_features(features, eps=eps, min_samples=min_samples, k1=k1, k2=k2, cameras=cameras)
            assert same_partition(result.labels, dense_labels(dense, eps, min_samples)), (k1, k2, eps, min_samples)
            assert result.num_clusters == result.labels.max() + 1
    assert len(cluster_counts) >= 6  # eps and min_samples matter on this set: the comparison is not vacuous


def test_dbscan_labels_count_a_stored_zero_as_a_neighbour():
    """Images 0 and 1 at distance 0 (stored explicitly, as jaccard_graph stores it), 2 at 0.5 from both, 3 sharing
    nothing with anyone (distance 1: not stored)."""
    graph = csr_matrix(
        (
            np.array([0, 0, 0.5, 0, 0, 0.5, 0, 0.5, 0.5, 0], dtype=np.float32),
            np.array([0, 1, 2, 1, 0, 2, 2, 0, 1, 3]),
            np.array([0, 3, 6, 9, 10]),
        ),
        shape=(4, 4),
    )
    np.testing.assert_array_equal(dbscan_labels(graph, eps=0.1, min_samples=2), [0, 0, -1, -1])
    np.testing.assert_array_equal(dbscan_labels(graph, eps=0.0, min_samples=2), [0, 0, -1, -1])  # an auto eps of 0
    np.testing.assert_array_equal(dbscan_labels(graph, eps=0.5, min_samples=3), [0, 0, 0, -1])
    # at eps >= 1 every pair is within eps, stored or not (the Jaccard distance is at most 1)
    np.testing.assert_array_equal(dbscan_labels(graph, eps=1.0, min_samples=4), [0, 0, 0, 0])
    np.testing.assert_array_equal(dbscan_labels(graph, eps=1.5, min_samples=5), [-1, -1, -1, -1])


def test_dbscan_labels_filters_a_graph_kept_beyond_eps():
    """A graph kept up to distance 1 (e.g. to look at the distances first) clusters as one kept up to eps."""
    features, cameras = people(seed=1)
    full = distance_graph(features, k1=20, k2=6, cameras=cameras)
    for eps in [0.3, 0.6]:
        cut = distance_graph(features, k1=20, k2=6, cameras=cameras, max_distance=eps)
        assert full.nnz > cut.nnz
        np.testing.assert_array_equal(dbscan_labels(full, eps, 4), dbscan_labels(cut, eps, 4))


def test_auto_eps_from_the_nearest_pairs_equals_auto_eps_from_every_pair(monkeypatch):
    """eps None reads only the pairs auto_eps averages (a graph a fraction of the full one's size) and finds the
    radius and the clusters the dense distances give."""
    from reid_tao.evaluation import clustering
    from reid_tao.evaluation.clustering import auto_eps, auto_eps_pairs

    built = []
    monkeypatch.setattr(
        clustering, "jaccard_graph", lambda *args, **kwargs: built.append(jaccard_graph(*args, **kwargs)) or built[-1]
    )
    features, cameras = people(seed=2)
    dense = dense_distances(features, 20, 6, cameras)
    for share in [0.002, 0.01, 0.05]:  # radius 0 (58 pairs at distance 0 here), 0.007, 0.36
        count = auto_eps_pairs(len(features), share)
        smallest = np.sort(dense[np.triu_indices(len(features), k=1)])[:count]
        expected_eps = float(smallest.astype(np.float64).mean())
        result = cluster_features(features, eps=None, eps_share=share, min_samples=2, k1=20, k2=6, cameras=cameras)
        assert result.eps == expected_eps
        assert same_partition(result.labels, dense_labels(dense, expected_eps, 2))
        full = distance_graph(features, k1=20, k2=6, cameras=cameras)
        nearest = distance_graph(features, k1=20, k2=6, cameras=cameras, nearest_pairs=count)
        assert auto_eps(nearest, share) == auto_eps(full, share) == expected_eps
        assert built[0].nnz == nearest.nnz < full.nnz / 3  # what cluster_features built
        built.clear()


def scenes(seed: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """24 people, 2 images on each of 2 cameras; on each camera, groups of 3 people share a scene (light,
    background) that makes them closer than one person's views on the two cameras; the groups differ by camera,
    so camera centring does not remove the scenes."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(24, 32, generator=generator)
    features, identities, cameras = [], [], []
    for camera in range(2):
        scene = 1.2 * torch.randn(8, 32, generator=generator)
        for rank, person in enumerate(torch.randperm(24, generator=generator).tolist()):
            for _ in range(2):
                features.append(centres[person] + scene[rank // 3] + 0.3 * torch.randn(32, generator=generator))
                identities.append(person)
                cameras.append(camera)
    return torch.stack(features), np.array(identities), torch.tensor(cameras)


def clusters_on_both_cameras(labels: np.ndarray, cameras: torch.Tensor) -> int:
    cameras = cameras.numpy()
    return len(set(labels[(labels >= 0) & (cameras == 0)]) & set(labels[(labels >= 0) & (cameras == 1)]))


def test_same_camera_penalty_joins_a_persons_views_on_two_cameras():
    features, identities, cameras = scenes(seed=0)
    settings = dict(eps=None, eps_share=3 / len(identities), k1=6, k2=1, min_samples=2, cameras=cameras)
    plain = cluster_features(features, **settings)
    penalised = cluster_features(features, camera_penalty=1.0, **settings)
    assert clusters_on_both_cameras(plain.labels, cameras) <= 1  # the scenes win without the penalty
    assert clusters_on_both_cameras(penalised.labels, cameras) >= 5
    assert agreement(penalised.labels, identities) > agreement(plain.labels, identities) + 0.2


def test_same_camera_penalty_is_off_with_one_camera():
    features, _, cameras = scenes(seed=0)
    one = torch.zeros_like(cameras)
    settings = dict(eps=None, eps_share=0.05, k1=6, k2=1, min_samples=2, cameras=one)
    assert np.array_equal(
        cluster_features(features, camera_penalty=1.0, **settings).labels, cluster_features(features, **settings).labels
    )
