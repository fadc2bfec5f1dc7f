"""k-reciprocal re-ranking: the scalable implementation must equal a plain dense reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_tao.errors import DataError
from reid_tao.evaluation.rerank import jaccard_distance, jaccard_graph, re_ranking


def reference_re_ranking(
    query: np.ndarray,
    gallery: np.ndarray,
    k1: int,
    k2: int,
    lambda_value: float,
    all_columns: bool = False,
    penalty: np.ndarray | None = None,
) -> np.ndarray:
    """Dense float64 transcription of Zhong et al.'s algorithm, one probe at a time; ``penalty`` (N, N) is added
    to the squared distances first."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    num_query, num_all = len(query), len(features)
    difference = features[:, None, :] - features[None, :, :]
    original = (difference**2).sum(-1)
    if penalty is not None:
        original = original + penalty
    original = np.transpose(original / np.max(original, axis=0))
    rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros((num_all, num_all))
    half = int(np.around(k1 / 2))
    for i in range(num_all):
        k_reciprocal = reciprocal(i, k1)
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            candidate_set = reciprocal(candidate, half)
            if len(np.intersect1d(candidate_set, k_reciprocal)) > 2 / 3 * len(candidate_set):
                expansion = np.append(expansion, candidate_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(num_all)])
    jaccard = np.zeros((num_query, num_all))
    for i in range(num_query):
        overlap = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final if all_columns else final[:, num_query:]


def random_features(num: int, dim: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """L2-normalised Gaussian features (general position: no neighbour ties)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num, dim, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(features, dim=1).to(dtype)


def clustered_features(num_ids: int, per_id: int, dim: int, seed: int) -> torch.Tensor:
    """Identities as tight clusters, so reciprocal sets and their expansion are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=generator, dtype=torch.float64)
    noise = 0.6 * torch.randn(num_ids, per_id, dim, generator=generator, dtype=torch.float64)
    features = (centres[:, None, :] + noise).reshape(num_ids * per_id, dim)
    features = features[torch.randperm(len(features), generator=generator)]
    return torch.nn.functional.normalize(features, dim=1)


def check_against_reference(query, gallery, k1, k2, lambda_value, block_size=None, atol=1e-4):
    result = re_ranking(query, gallery, k1, k2, lambda_value, block_size=block_size)
    expected = reference_re_ranking(query.double().numpy(), gallery.double().numpy(), k1, k2, lambda_value)
    assert result.dtype == torch.float32
    assert result.shape == (len(query), len(gallery))
    np.testing.assert_allclose(result.numpy(), expected, atol=atol, rtol=0)
    return result


@pytest.mark.parametrize(
    "num_query, num_gallery, dim, k1, k2, lambda_value, seed",
    [
        (7, 30, 16, 20, 6, 0.3, 0),
        (7, 30, 16, 20, 6, 0.3, 1),
        (20, 100, 32, 20, 6, 0.3, 2),
        (20, 100, 32, 20, 1, 0.3, 3),
        (20, 100, 32, 7, 3, 0.5, 4),
        (20, 100, 32, 5, 2, 0.0, 5),
        (10, 40, 8, 3, 10, 1.0, 6),
        (15, 60, 24, 1, 1, 0.3, 7),
    ],
)
def test_matches_reference_on_random_features(num_query, num_gallery, dim, k1, k2, lambda_value, seed):
    features = random_features(num_query + num_gallery, dim, seed)
    check_against_reference(features[:num_query], features[num_query:], k1, k2, lambda_value)


@pytest.mark.parametrize("k1, k2, seed", [(20, 6, 10), (10, 3, 11), (6, 1, 12)])
def test_matches_reference_on_clustered_features(k1, k2, seed):
    features = clustered_features(num_ids=15, per_id=8, dim=24, seed=seed).float()
    query, gallery = features[:20], features[20:]
    result = check_against_reference(query, gallery, k1, k2, 0.3)
    # Re-ranking must be informative here: the Jaccard part separates near from far items.
    assert result.min() < 0.5 < result.max()


@pytest.mark.parametrize("block_size", [3, 13, 64])
def test_block_size_does_not_change_the_result(block_size):
    features = clustered_features(num_ids=10, per_id=6, dim=16, seed=20).float()
    query, gallery = features[:12], features[12:]
    check_against_reference(query, gallery, 8, 4, 0.3, block_size=block_size)
    unblocked = re_ranking(query, gallery, 8, 4, 0.3)
    blocked = re_ranking(query, gallery, 8, 4, 0.3, block_size=block_size)
    torch.testing.assert_close(blocked, unblocked, atol=1e-5, rtol=0)


def test_small_internal_budgets_give_the_same_result(monkeypatch):
    """Force many chunks in every stage (distance tiles, index work, weights, Jaccard pairs)."""
    import reid_tao.evaluation.rerank as rerank_module

    features = clustered_features(num_ids=12, per_id=6, dim=16, seed=21).float()
    query, gallery = features[:14], features[14:]
    expected = re_ranking(query, gallery)
    monkeypatch.setattr(rerank_module, "_CPU_BLOCK_BYTES", 4096)
    chunked = re_ranking(query, gallery)
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=0)
    check_against_reference(query, gallery, 20, 6, 0.3)


def test_float64_and_float32_inputs_agree():
    features = random_features(80, 32, seed=30, dtype=torch.float64)
    result64 = check_against_reference(features[:16], features[16:], 20, 6, 0.3, atol=1e-6)
    result32 = re_ranking(features[:16].float(), features[16:].float())
    assert result64.dtype == result32.dtype == torch.float32
    torch.testing.assert_close(result32, result64, atol=1e-4, rtol=0)


def test_single_query():
    features = random_features(41, 16, seed=40)
    check_against_reference(features[:1], features[1:], 20, 6, 0.3)


def test_tiny_problem_with_k_larger_than_the_number_of_probes():
    features = random_features(6, 8, seed=41)
    check_against_reference(features[:2], features[2:], 20, 6, 0.3)


def test_empty_query_or_gallery_gives_an_empty_matrix():
    features = random_features(10, 8, seed=42)
    assert re_ranking(features[:0], features).shape == (0, 10)
    assert re_ranking(features, features[:0]).shape == (10, 0)


def test_duplicate_features_do_not_crash():
    base = random_features(12, 16, seed=50)
    # Every feature appears 4 times (query copies also in the gallery), plus a block of 30 copies
    # of one feature: more identical probes than k1 + 1, so reciprocal sets can come out empty.
    features = torch.cat([base.repeat(4, 1), base[:1].repeat(30, 1)])
    features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))]
    result = re_ranking(features[:10], features[10:])
    assert result.shape == (10, len(features) - 10)
    assert torch.isfinite(result).all()
    assert (result >= -1e-6).all() and (result <= 1 + 1e-6).all()


def test_all_identical_features_give_finite_distances():
    features = torch.ones(25, 8)
    result = re_ranking(features[:5], features[5:], k1=4, k2=2)
    assert torch.isfinite(result).all()


def test_identical_gallery_copy_of_a_query_ranks_first():
    features = random_features(60, 16, seed=60)
    query, gallery = features[:10], torch.cat([features[10:], features[:10]])
    result = re_ranking(query, gallery)
    # Gallery item 50 + q is an exact copy of query q.
    assert torch.equal(result.argmin(1), torch.arange(50, 60))


def test_result_stays_on_the_input_device_and_accepts_half_precision():
    features = random_features(50, 16, seed=70)
    result = re_ranking(features[:10].half(), features[10:].half())
    assert result.device == features.device and result.dtype == torch.float32
    expected = re_ranking(features[:10].half().float(), features[10:].half().float())
    torch.testing.assert_close(result, expected)


def test_global_matmul_precision_is_restored():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        features = random_features(40, 8, seed=75)
        check_against_reference(features[:5], features[5:], 20, 6, 0.3)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_memory_does_not_grow_with_the_square_of_the_probe_count():
    """N = 8,000 probes: one dense N x N float32 matrix alone would add 256 MB to the peak RSS.

    With a 16 MiB block budget the blocked implementation adds about 60-80 MB (tiles, index
    chunks and memory the allocator keeps), so 150 MB separates the two clearly.
    """
    script = textwrap.dedent(
        """
        import resource, torch
        import reid_tao.evaluation.rerank as rerank
        rerank._CPU_BLOCK_BYTES = 16 * 2**20
        generator = torch.Generator().manual_seed(0)
        features = torch.nn.functional.normalize(torch.randn(8000, 16, generator=generator), dim=1)
        query, gallery = features[:50].clone(), features[50:].clone()
        torch.zeros(1).add_(1)  # load kernels before measuring
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = rerank.re_ranking(query, gallery)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert result.shape == (50, 7950) and bool(torch.isfinite(result).all())
        print((after - before) / 1024)
        """
    )
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert completed.returncode == 0, completed.stderr
    growth_mb = float(completed.stdout.strip().splitlines()[-1])
    assert growth_mb < 150, f"peak RSS grew by {growth_mb:.0f} MB"


@pytest.mark.gpu
def test_gpu_matches_cpu():
    features = clustered_features(num_ids=20, per_id=8, dim=32, seed=80).float()
    cpu = re_ranking(features[:30], features[30:])
    gpu = re_ranking(features[:30].cuda(), features[30:].cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"k1": 0}, "k1"),
        ({"k2": 0}, "k2"),
        ({"k1": 2.5}, "k1"),
        ({"lambda_value": 1.5}, "lambda_value"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, field):
    features = random_features(10, 8, seed=90)
    with pytest.raises(ValueError, match=field):
        re_ranking(features[:2], features[2:], **kwargs)


def test_non_finite_features_raise_data_error():
    features = random_features(20, 8, seed=91)
    features[7, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        re_ranking(features[:5], features[5:])


def test_features_that_require_grad_are_accepted():
    features = random_features(40, 8, seed=92).requires_grad_()
    result = re_ranking(features[:5], features[5:])
    assert not result.requires_grad
    check_against_reference(features[:5].detach(), features[5:].detach(), 20, 6, 0.3)


def test_mismatched_feature_dimensions_raise():
    with pytest.raises(ValueError, match="dimensions"):
        re_ranking(torch.randn(2, 8), torch.randn(5, 4))


def test_jaccard_overlaps_are_accumulated_in_float64():
    """One large shared weight and a thousand tiny ones: a float32 accumulator drops every tiny term (and
    CUDA's atomic order would decide which); float64 keeps them."""
    from reid_tao.evaluation.rerank import _min_overlap

    columns = 1001
    weights = torch.full((columns,), 1e-8, dtype=torch.float32)
    weights[0] = 1.0
    members = torch.arange(columns)[None, :]  # the query uses every column, as does gallery row 0
    overlap = _min_overlap(
        members,
        weights[None, :],
        posting_row=torch.zeros(columns, dtype=torch.long),
        posting_weight=weights,
        posting_start=torch.arange(columns + 1),
        posting_length=torch.cat([torch.ones(columns, dtype=torch.long), torch.zeros(1, dtype=torch.long)]),
        num_gallery=1,
        total_pairs=columns,
    )
    expected = weights.double().sum().item()
    assert overlap.dtype == torch.float64 and overlap.item() == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("k1,k2,block_size", [(6, 3, None), (10, 1, None), (6, 3, 7)])
def test_jaccard_distance_matches_reference_all_against_all(k1, k2, block_size):
    """The clustering distance: every probe against every probe (itself included), no duplicated probes."""
    features = clustered_features(8, 5, 16, seed=3)
    expected = reference_re_ranking(features.numpy(), features.numpy()[:0], k1, k2, 0.0, all_columns=True)
    result = jaccard_distance(features.float(), k1, k2, block_size=block_size)
    assert result.shape == (40, 40) and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-4)


def stored_entries(graph) -> np.ndarray:
    """The graph as a dense array with NaN where no entry is stored (a stored 0 stays 0)."""
    dense = np.full(graph.shape, np.nan, dtype=np.float32)
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    dense[rows, graph.indices] = graph.data
    return dense


@pytest.mark.parametrize(
    "k1,k2,max_distance,block_size",
    [(20, 6, 1.0, None), (10, 1, 1.0, None), (20, 6, 1.0, 7), (20, 6, 0.6, None), (10, 1, 0.3, 13)],
)
def test_jaccard_graph_stores_the_dense_distances_up_to_max_distance(k1, k2, max_distance, block_size):
    """The sparse clustering distance: bit for bit the dense one where stored; every pair it leaves out is
    farther than max_distance, and with max_distance 1 (pairs whose V rows share no column) exactly 1."""
    features = clustered_features(30, 8, 16, seed=5).float()
    features = torch.cat([features, features[:3]])  # duplicates: Jaccard distance 0 to their twins
    dense = jaccard_distance(features, k1, k2, block_size=block_size).clamp_(min=0.0).numpy()
    graph = jaccard_graph(features, k1, k2, max_distance=max_distance, block_size=block_size)
    assert graph.format == "csr" and graph.dtype == np.float32 and graph.shape == dense.shape
    stored = stored_entries(graph)
    kept = ~np.isnan(stored)
    np.testing.assert_array_equal(stored[kept], dense[kept])
    assert (dense[kept] <= max_distance).all()
    if max_distance < 1.0:
        assert (dense[~kept] > max_distance).all() and kept.sum() > 2 * len(features)  # more than self and twins
    else:
        assert (dense[~kept] == 1.0).all() and (~kept).any()
    np.testing.assert_array_equal(kept, kept.T)  # symmetric, as the distance
    # a distance of 0 (a probe to itself, twins) is stored: a missing entry reads "not a neighbour" to DBSCAN
    zero = dense == 0.0
    assert kept[zero].all() and (stored[zero] == 0.0).all() and zero.sum() > np.diag(zero).sum()
    # rows sorted by distance: the layout scikit-learn's precomputed sparse neighbours expect
    same_row = np.diff(np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))) == 0
    assert (np.diff(graph.data)[same_row] >= 0).all()


@pytest.mark.parametrize("nearest_pairs,block_size", [(60, None), (60, 5), (1, 5), (10**6, None)])
def test_jaccard_graph_keeps_the_nearest_pairs(nearest_pairs, block_size):
    """nearest_pairs: every pair (i < j) up to the distance of the nearest_pairs-th closest, ties included, and
    no other; the cut is found across blocks (block_size 5: 50 blocks, pruned many times)."""
    features = clustered_features(25, 10, 16, seed=7).float()
    features = torch.cat([features, features[:4]])  # twins: ties at distance 0
    dense = jaccard_distance(features, 20, 6, block_size=block_size).clamp_(min=0.0).numpy()
    graph = jaccard_graph(features, 20, 6, nearest_pairs=nearest_pairs, block_size=block_size)
    stored = stored_entries(graph)
    upper = np.triu(np.ones_like(dense, dtype=bool), k=1)
    pairs = np.sort(dense[upper])
    cut = pairs[nearest_pairs - 1] if nearest_pairs <= (pairs < 1).sum() else 1.0
    np.testing.assert_array_equal(~np.isnan(stored[upper]), dense[upper] <= cut if cut < 1 else dense[upper] < 1)
    np.testing.assert_array_equal(
        stored[upper][~np.isnan(stored[upper])],
        dense[upper][dense[upper] <= cut] if cut < 1 else dense[upper][dense[upper] < 1],
    )
    assert (~np.isnan(stored[upper])).sum() >= min(nearest_pairs, (pairs < 1).sum())


@pytest.mark.parametrize("k1,k2,block_size", [(10, 3, None), (6, 1, 7)])
def test_jaccard_graph_with_a_same_camera_penalty_matches_the_reference(k1, k2, block_size):
    """The penalty is added to the squared distance of two probes from one camera (never to a probe's own) in
    the neighbour sets, their weights and the query expansion: the reference with the penalty added first."""
    features = clustered_features(8, 5, 16, seed=3).float()
    cameras = torch.arange(40) % 3
    penalty = 0.5 * (cameras[:, None] == cameras[None, :]).double().numpy()
    np.fill_diagonal(penalty, 0.0)
    expected = reference_re_ranking(features.numpy(), features.numpy()[:0], k1, k2, 0.0, True, penalty)
    graph = jaccard_graph(features, k1, k2, block_size=block_size, cameras=cameras, camera_penalty=0.5)
    stored = stored_entries(graph)
    kept = ~np.isnan(stored)
    np.testing.assert_allclose(stored[kept], expected[kept], atol=1e-4)
    assert (expected[~kept] > 1 - 1e-4).all()
    plain = reference_re_ranking(features.numpy(), features.numpy()[:0], k1, k2, 0.0, all_columns=True)
    assert np.abs(plain - expected).max() > 0.1  # the penalty changes the distances: the comparison is not vacuous


@pytest.mark.parametrize(
    "cameras,penalty", [(None, 0.5), (torch.zeros(3, dtype=torch.long), 0.5), (torch.zeros(40), -1.0)]
)
def test_jaccard_graph_rejects_a_bad_same_camera_penalty(cameras, penalty):
    with pytest.raises(ValueError, match="camera_penalty"):
        jaccard_graph(clustered_features(8, 5, 16, seed=3).float(), 6, 1, cameras=cameras, camera_penalty=penalty)


def test_jaccard_graph_rejects_a_negative_max_distance():
    with pytest.raises(ValueError, match="max_distance"):
        jaccard_graph(random_features(5, 4, seed=0), max_distance=-0.1)
    with pytest.raises(ValueError, match="nearest_pairs"):
        jaccard_graph(random_features(5, 4, seed=0), nearest_pairs=0)
