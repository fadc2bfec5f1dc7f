"""Rank metrics, protocol-filtered top-k and pairwise distances (CPU, synthetic data)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_tao.errors import DataError
from reid_tao.evaluation import fast_ranking
from reid_tao.evaluation import metrics as metrics_module
from reid_tao.evaluation.distance import pairwise_distance
from reid_tao.evaluation.metrics import RankMetrics, evaluate_rankings, top_ranked

# ----------------------------------------------------------------------------------------------
# plain per-query reference (stable argsort of each row)


def naive_metrics(distmat, query_pids, gallery_pids, query_cams, gallery_cams, max_rank):
    distmat = np.asarray(distmat)
    aps, inps, first_ranks = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        same_camera = (gallery_pids[order] == query_pids[q]) & (gallery_cams[order] == query_cams[q])
        keep = (gallery_pids[order] >= 0) & ~same_camera
        order = order[keep]
        hits = (gallery_pids[order] == query_pids[q]) & (query_pids[q] > 0)
        if not hits.any():
            continue
        positions = np.nonzero(hits)[0]
        aps.append(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))
        inps.append(len(positions) / (positions[-1] + 1))
        first_ranks.append(positions[0])
    first_ranks = np.array(first_ranks)
    cmc = np.array([(first_ranks <= r).mean() for r in range(max_rank)])
    return cmc, float(np.mean(aps)), float(np.mean(inps)), len(aps)


def naive_top_ranked(distmat, query_pids, gallery_pids, query_cams, gallery_cams, k):
    indices = np.full((distmat.shape[0], k), -1)
    hits = np.zeros((distmat.shape[0], k), dtype=bool)
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        same_camera = (gallery_pids[order] == query_pids[q]) & (gallery_cams[order] == query_cams[q])
        keep = (gallery_pids[order] >= 0) & ~same_camera
        order = order[keep][:k]
        indices[q, : len(order)] = order
        hits[q, : len(order)] = (gallery_pids[order] == query_pids[q]) & (query_pids[q] > 0)
    return indices, hits


def random_protocol(rng, num_query, num_gallery, num_ids, num_cams):
    gallery_pids = rng.integers(-1, num_ids, num_gallery)  # includes junk (-1) and distractors (0)
    gallery_cams = rng.integers(0, num_cams, num_gallery)
    query_pids = rng.integers(1, num_ids, num_query)
    query_cams = rng.integers(0, num_cams, num_query)
    return query_pids, gallery_pids, query_cams, gallery_cams


def assert_matches_reference(distmat, ids, max_rank, block_size=None):
    result = evaluate_rankings(distmat, *ids, max_rank=max_rank, block_size=block_size)
    cmc, mean_ap, mean_inp, num_valid = naive_metrics(np.asarray(distmat, dtype=np.float64), *ids, max_rank)
    assert result.num_valid_query == num_valid
    assert result.cmc.shape == (max_rank,)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    assert result.mAP == pytest.approx(mean_ap, abs=1e-12)
    assert result.mINP == pytest.approx(mean_inp, abs=1e-12)
    return result


@pytest.fixture
def exact_path_rows(monkeypatch):
    """Records how many rows go through the exact (sorting) path."""
    rows = []
    original = metrics_module._rank_block_by_sort

    def recording(block, block_rows, *args):
        rows.append(len(block_rows))
        return original(block, block_rows, *args)

    monkeypatch.setattr(metrics_module, "_rank_block_by_sort", recording)
    return rows


# ----------------------------------------------------------------------------------------------
# hand-computed cases

# Gallery for the hand-computed query (id 1, camera 0), listed in distance order:
#   g0 d=0.1 id 1 cam 0 -> removed (same id, same camera)
#   g1 d=0.2 id 0 cam 1 -> distractor, rank 1
#   g2 d=0.3 id 1 cam 1 -> match, rank 2
#   g3 d=0.4 id -1      -> junk, removed
#   g4 d=0.5 id 2 cam 0 -> rank 3
#   g5 d=0.6 id 1 cam 2 -> match, rank 4
HAND_DIST = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
HAND_GALLERY_PIDS = [1, 0, 1, -1, 2, 1]
HAND_GALLERY_CAMS = [0, 1, 1, 0, 0, 2]


def test_hand_computed_protocol():
    result = evaluate_rankings(np.array(HAND_DIST), [1], HAND_GALLERY_PIDS, [0], HAND_GALLERY_CAMS, max_rank=5)
    assert result.num_valid_query == 1
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1, 1])


def test_query_without_match_is_skipped_and_counted():
    distmat = np.array(HAND_DIST * 3)
    # query 2 (id 2, camera 0): its only gallery image g4 is on camera 0 -> no match.
    # query 3 (id -1): junk query, skipped.
    result = evaluate_rankings(distmat, [1, 2, -1], HAND_GALLERY_PIDS, [0, 0, 0], HAND_GALLERY_CAMS, max_rank=3)
    assert result.num_query == 3
    assert result.num_valid_query == 1
    assert result.mAP == pytest.approx(0.5)
    np.testing.assert_allclose(result.cmc, [0, 1, 1])
    # the has-a-true-match mask the sampled-matches figure draws from comes with the ranking
    np.testing.assert_array_equal(result.valid_query, [True, False, False])
    np.testing.assert_array_equal(np.isnan(result.query_ap), ~result.valid_query)


def test_ties_are_broken_by_gallery_index():
    # All four gallery images at the same distance; the match has index 2 and two valid images before it.
    distmat = torch.zeros(1, 4)
    result = evaluate_rankings(distmat, [5], [7, 8, 5, 9], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_allclose(result.cmc, [0, 0, 1, 1])
    assert result.mAP == pytest.approx(1 / 3)
    # Moving the match to index 0 makes it first.
    result = evaluate_rankings(distmat, [5], [5, 8, 7, 9], [0], [1, 1, 1, 1], max_rank=4)
    assert result.mAP == pytest.approx(1.0)


def test_distractors_never_match_even_for_a_distractor_query():
    distmat = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    result = evaluate_rankings(distmat, [0, 3], [0, 0, 3], [0, 0], [1, 1, 1], max_rank=3)
    assert result.num_valid_query == 1  # the id-0 query has no true match
    np.testing.assert_array_equal(result.valid_query, [False, True])
    assert result.mAP == pytest.approx(1 / 3)


def test_as_dict_pads_rank5_and_rank10_with_the_last_cmc_value():
    result = evaluate_rankings(np.array(HAND_DIST), [1], HAND_GALLERY_PIDS, [0], HAND_GALLERY_CAMS, max_rank=3)
    summary = result.as_dict()
    assert summary["rank1"] == 0.0 and summary["rank5"] == 1.0 and summary["rank10"] == 1.0
    assert summary["cmc"] == [0.0, 1.0, 1.0]
    assert {"mAP", "mINP", "num_query", "num_gallery", "num_valid_query"} <= set(summary)
    json.dumps(summary)  # plain Python values only


def test_no_valid_query_raises_data_error():
    # single-camera data: every match is on the query's camera
    with pytest.raises(DataError, match="another camera"):
        evaluate_rankings(np.ones((2, 3)), [1, 2], [1, 2, 2], [0, 0], [0, 0, 0])
    with pytest.raises(DataError, match="id > 0"):
        evaluate_rankings(np.ones((1, 3)), [-1], [1, 2, 2], [0], [1, 1, 1])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DataError, match="query_pids"):
        evaluate_rankings(np.ones((2, 3)), [1], [1, 2, 2], [0, 0], [1, 1, 1])
    with pytest.raises(DataError, match="NaN"):
        evaluate_rankings(np.array([[0.1, np.nan, 0.3]]), [1], [1, 2, 2], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rankings(np.ones((1, 3)), [1], [1, 2, 2], [0], [1, 1, 1], max_rank=0)


# ----------------------------------------------------------------------------------------------
# equality with the plain reference


@pytest.mark.parametrize("block_size", [None, 1, 3, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_with_many_ties(block_size, dtype):
    rng = np.random.default_rng(0)
    ids = random_protocol(rng, 40, 300, 8, 3)
    distmat = rng.integers(0, 6, (40, 300)).astype(dtype)  # integer distances: ties everywhere
    assert_matches_reference(distmat, ids, max_rank=20, block_size=block_size)


@pytest.mark.parametrize("block_size", [None, 2, 5])
def test_matches_reference_when_max_rank_exceeds_gallery(block_size):
    rng = np.random.default_rng(1)
    ids = random_protocol(rng, 25, 12, 4, 2)
    result = assert_matches_reference(rng.integers(0, 3, (25, 12)).astype(np.float32), ids, 30, block_size)
    assert result.cmc[-1] == 1.0
    assert_matches_reference(rng.random((25, 12)), ids, 30, block_size)


def test_float32_ties_stay_on_the_fast_path(exact_path_rows):
    # Sporadic exact ties, as in real float32 distance matrices: the fast path resolves them itself.
    rng = np.random.default_rng(2)
    ids = random_protocol(rng, 60, 500, 12, 4)
    distmat = (rng.integers(0, 3000, (60, 500)) / 1024).astype(np.float32)
    query_pids, gallery_pids = ids[0], ids[1]
    match_values = distmat[gallery_pids[None, :] == query_pids[:, None]]
    assert np.isin(match_values, distmat[gallery_pids[None, :] != query_pids[:, None]]).sum() > 50
    assert_matches_reference(distmat, ids, 50)
    assert exact_path_rows == []


def test_many_matches_at_one_value_use_the_exact_path(exact_path_rows):
    rng = np.random.default_rng(9)
    ids = random_protocol(rng, 30, 400, 5, 3)
    assert_matches_reference(rng.integers(0, 3, (30, 400)).astype(np.float32), ids, 50)
    assert sum(exact_path_rows) > 0


def test_continuous_distances_use_the_fast_path(exact_path_rows):
    rng = np.random.default_rng(3)
    ids = random_protocol(rng, 80, 700, 15, 6)
    for dtype in (np.float32, np.float64):
        assert_matches_reference(rng.random((80, 700)).astype(dtype), ids, 10, block_size=16)
    assert exact_path_rows == []


def test_negative_and_signed_zero_distances():
    rng = np.random.default_rng(4)
    ids = random_protocol(rng, 30, 200, 6, 3)
    distmat = rng.integers(-3, 3, (30, 200)).astype(np.float32)
    distmat[distmat == 0] = -0.0  # a mix of -0.0 and +0.0 must tie like equal values
    distmat[:, ::7] = 0.0
    assert_matches_reference(distmat, ids, 25)
    assert_matches_reference(distmat.astype(np.float64), ids, 25)


def test_infinite_distances_are_ranked_last_like_a_stable_sort():
    rng = np.random.default_rng(5)
    ids = random_protocol(rng, 20, 150, 5, 3)
    distmat = rng.random((20, 150)).astype(np.float32)
    distmat[rng.random((20, 150)) < 0.2] = np.inf
    distmat[3, :] = np.inf
    assert_matches_reference(distmat, ids, 40)


def test_matches_crowded_into_one_cell(exact_path_rows):
    # 2..9 matches within a few 1e-6 of each other share a cell of the fast ranker: they need more
    # table levels (up to the limit) or the exact path (beyond it).
    rng = np.random.default_rng(6)
    num_gallery = 400
    gallery_pids = np.repeat(np.arange(1, 41), 10)
    gallery_cams = np.tile(np.arange(10), 40)
    query_pids = np.arange(1, 41)
    query_cams = np.full(40, 20)
    distmat = rng.random((40, num_gallery)).astype(np.float32) + 1.0
    for q in range(40):
        columns = np.nonzero(gallery_pids == q + 1)[0]
        crowd = 2 + q % 8  # 2..9 matches in one cell
        distmat[q, columns[:crowd]] = 1.5 + np.arange(crowd) * 1e-6
    ids = (query_pids, gallery_pids, query_cams, gallery_cams)
    assert_matches_reference(distmat, ids, 30, block_size=8)
    assert 0 < sum(exact_path_rows) < 40  # only the most crowded rows were sorted


def test_matches_a_few_ulps_apart_and_integer_matrices():
    # A span of one float32 ulp is too narrow for the lane layout of the fast path (the rows are
    # redone with slot tables); integer matrices are ranked as float64.
    rng = np.random.default_rng(10)
    ids = random_protocol(rng, 30, 200, 6, 3)
    query_pids, gallery_pids = ids[0], ids[1]
    distmat = (rng.random((30, 200)) * 4).astype(np.float32)
    for q in range(30):
        columns = np.nonzero(gallery_pids == query_pids[q])[0]
        distmat[q, columns] = np.float32(2.0)
        distmat[q, columns[::2]] = np.nextafter(np.float32(2.0), np.float32(3.0))
    assert_matches_reference(distmat, ids, 20)
    integers = rng.integers(0, 50, (30, 200))
    result = evaluate_rankings(torch.from_numpy(integers), *ids, max_rank=20)
    assert result.mAP == pytest.approx(naive_metrics(integers, *ids, 20)[1], abs=1e-12)


def test_two_matches_one_ulp_apart_with_items_below_them():
    rng = np.random.default_rng(11)
    num_query = 20
    gallery_pids = np.concatenate([np.repeat(np.arange(1, num_query + 1), 2), np.zeros(200, dtype=int)])
    gallery_cams = np.concatenate([np.tile([1, 2], num_query), rng.integers(0, 3, 200)])
    query_pids, query_cams = np.arange(1, num_query + 1), np.zeros(num_query, dtype=int)
    distmat = (rng.random((num_query, len(gallery_pids))) * 4).astype(np.float32)
    for q in range(num_query):
        distmat[q, 2 * q] = 2.0
        distmat[q, 2 * q + 1] = np.nextafter(np.float32(2.0), np.float32(3.0))
    assert_matches_reference(distmat, (query_pids, gallery_pids, query_cams, gallery_cams), 50)


def test_most_rows_take_the_single_scatter_pass(monkeypatch):
    slot_rows = []
    original = fast_ranking._FastRanker._before_by_slots

    def recording(self, keys, *args):
        slot_rows.append(keys.shape[0])
        return original(self, keys, *args)

    monkeypatch.setattr(fast_ranking._FastRanker, "_before_by_slots", recording)
    rng = np.random.default_rng(12)
    ids = random_protocol(rng, 200, 600, 60, 4)
    assert_matches_reference(rng.random((200, 600)).astype(np.float32), ids, 10)
    assert sum(slot_rows) < 60  # only rows whose matches share a cell


def test_torch_inputs_and_numpy_inputs_agree():
    rng = np.random.default_rng(7)
    ids = random_protocol(rng, 30, 120, 6, 3)
    distmat = rng.random((30, 120)).astype(np.float32)
    from_numpy = evaluate_rankings(distmat, *ids, max_rank=10)
    from_torch = evaluate_rankings(torch.from_numpy(distmat), *(torch.from_numpy(a) for a in ids), max_rank=10)
    assert from_numpy.as_dict() == from_torch.as_dict()
    half = evaluate_rankings(torch.from_numpy(distmat).half(), *ids, max_rank=10)
    reference = naive_metrics(torch.from_numpy(distmat).half().float().numpy(), *ids, 10)
    assert half.mAP == pytest.approx(reference[1], abs=1e-12)


def test_result_type():
    result = evaluate_rankings(np.array(HAND_DIST), [1], HAND_GALLERY_PIDS, [0], HAND_GALLERY_CAMS, max_rank=2)
    assert isinstance(result, RankMetrics)
    assert (result.num_query, result.num_gallery) == (1, 6)


# ----------------------------------------------------------------------------------------------
# top_ranked


def test_top_ranked_filters_like_the_protocol():
    indices, is_match = top_ranked(np.array(HAND_DIST), [1], HAND_GALLERY_PIDS, [0], HAND_GALLERY_CAMS, k=6)
    assert indices.tolist() == [[1, 2, 4, 5, -1, -1]]  # g0 (same camera) and g3 (junk) removed, padded
    assert is_match.tolist() == [[False, True, False, True, False, False]]
    assert indices.dtype == torch.int64 and is_match.dtype == torch.bool


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 5, 400])
def test_top_ranked_matches_reference_with_ties(dtype, k):
    rng = np.random.default_rng(8)
    ids = random_protocol(rng, 30, 250, 6, 3)
    distmat = rng.integers(-2, 4, (30, 250)).astype(dtype)
    indices, is_match = top_ranked(distmat, *ids, k=k, block_size=4)
    expected_indices, expected_hits = naive_top_ranked(distmat, *ids, k)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(is_match.numpy(), expected_hits)


# ----------------------------------------------------------------------------------------------
# pairwise_distance


def test_pairwise_distance_matches_definition():
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(7, 16, generator=generator), torch.randn(11, 16, generator=generator)
    distances = pairwise_distance(query, gallery)
    unit_q = query / query.norm(dim=1, keepdim=True)
    unit_g = gallery / gallery.norm(dim=1, keepdim=True)
    expected = ((unit_q[:, None, :] - unit_g[None, :, :]) ** 2).sum(-1)
    assert distances.shape == (7, 11) and distances.dtype == torch.float32
    torch.testing.assert_close(distances, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(distances, 2 - 2 * unit_q @ unit_g.T, atol=1e-5, rtol=1e-5)

    raw = pairwise_distance(query.numpy(), gallery.numpy(), normalize=False)
    torch.testing.assert_close(raw, torch.cdist(query, gallery) ** 2, atol=1e-4, rtol=1e-5)


def test_pairwise_distance_clamps_and_accepts_half_precision():
    features = torch.randn(5, 32).half()
    distances = pairwise_distance(features, features)
    assert distances.dtype == torch.float32
    assert bool((distances >= 0).all())
    assert float(distances.diagonal().max()) < 1e-5
    with pytest.raises(DataError, match="dimensions"):
        pairwise_distance(torch.randn(2, 8), torch.randn(2, 9))


def test_pairwise_distance_then_metrics_end_to_end():
    generator = torch.Generator().manual_seed(1)
    centroids = torch.randn(5, 64, generator=generator) * 3
    gallery_pids = torch.arange(1, 6).repeat_interleave(4)
    gallery_cams = torch.arange(4).repeat(5)
    query_pids, query_cams = torch.arange(1, 6), torch.full((5,), 9)
    gallery = centroids[gallery_pids - 1] + 0.1 * torch.randn(20, 64, generator=generator)
    query = centroids[query_pids - 1] + 0.1 * torch.randn(5, 64, generator=generator)
    result = evaluate_rankings(pairwise_distance(query, gallery), query_pids, gallery_pids, query_cams, gallery_cams)
    assert result.mAP == pytest.approx(1.0) and result.cmc[0] == 1.0


def test_query_shares_add_up_to_the_full_metrics_block_by_block(monkeypatch):
    """Distributed validation: sums over disjoint query shares (one empty, one without a valid query)
    reduced as one float64 vector give evaluate_rankings' metrics, never computing more than a block."""
    from reid_tao.evaluation import query_share
    from reid_tao.evaluation.metrics import RankSums

    rng = np.random.default_rng(4)
    num_query, num_gallery = 23, 57
    query_pids, gallery_pids = rng.integers(1, 8, num_query), rng.integers(-1, 8, num_gallery)
    query_cams, gallery_cams = rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    query_pids[:3] = 99  # no gallery image: the first share has no valid query
    query, gallery = torch.randn(num_query, 16), torch.randn(num_gallery, 16)
    ids = [torch.as_tensor(a) for a in (query_pids, gallery_pids, query_cams, gallery_cams)]
    full = evaluate_rankings(pairwise_distance(query, gallery), *ids, max_rank=10)

    shapes, real = [], query_share.pairwise_distance

    def recording(query_features, gallery_features):
        shapes.append((len(query_features), len(gallery_features)))
        return real(query_features, gallery_features)

    monkeypatch.setattr(query_share, "pairwise_distance", recording)
    shares = [(0, 0), (0, 3), (3, 11), (11, 23)]
    vectors = [
        query_share.query_share_sums(
            query[a:b], gallery, ids[0][a:b], ids[1], ids[2][a:b], ids[3], max_rank=10, block_elements=3 * num_gallery
        ).to_vector()
        for a, b in shares
    ]
    assert max(rows for rows, _ in shapes) == 3 and sum(rows for rows, _ in shapes) == num_query
    summed = RankSums.from_vector(torch.stack(vectors).sum(0), num_gallery).metrics()
    assert summed.num_valid_query == full.num_valid_query and summed.num_query == num_query
    assert summed.mAP == pytest.approx(full.mAP, abs=1e-12) and summed.mINP == pytest.approx(full.mINP, abs=1e-12)
    np.testing.assert_allclose(summed.cmc, full.cmc, atol=1e-12)
    with pytest.raises(DataError, match="no query has a matching gallery image"):
        RankSums.from_vector(vectors[1], num_gallery).metrics()


# ----------------------------------------------------------------------------------------------
# benchmark script (its data maker; the timing itself is not a test)


def test_benchmark_data_is_market_like_and_every_query_can_match(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))  # benchmark.py, benchmarks/
    benchmark = importlib.import_module("benchmark")
    from benchmarks.inputs import make_market_like

    data = make_market_like(60, 400, 16, seed=3)
    gallery_pids, gallery_cams = data["gallery_pids"], data["gallery_camids"]
    assert int((gallery_pids == -1).sum()) > 0 and int((gallery_pids == 0).sum()) > 0
    for pid, cam in zip(data["query_pids"].tolist(), data["query_camids"].tolist()):
        assert bool(((gallery_pids == pid) & (gallery_cams != cam)).any())
    benchmark.main(["metrics", "--num-query", "20", "--num-gallery", "120", "--dim", "8"])
    line = json.loads(capsys.readouterr().out.strip())
    assert line["task"] == "metrics" and line["metrics_seconds"] >= 0 and line["device"] == "cpu"


def test_evaluate_features_computes_every_ranking_once_into_the_result():
    from types import SimpleNamespace

    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.result import evaluate_features

    torch.manual_seed(0)
    query = [SimpleNamespace(pid=p, camid=0) for p in (1, 2, 3)]
    gallery = [SimpleNamespace(pid=p, camid=c) for p, c in ((1, 1), (2, 0), (3, 1), (3, 2), (0, 1), (4, 1))]
    features = torch.randn(len(query) + len(gallery), 8)
    plain = evaluate_features(features, query, gallery, max_rank=5)
    assert list(plain.rankings) == ["plain"] and plain.shown_name == "plain" and plain.max_rank == 5
    torch.testing.assert_close(plain.distances, pairwise_distance(features[:3], features[3:]))
    np.testing.assert_array_equal(plain.valid_query, [True, False, True])  # id 2 only on its own camera
    assert plain.valid_query is plain.plain.valid_query
    assert len(plain.plain.cmc) == 10  # Rank-10 is always available

    both = evaluate_features(features, query, gallery, max_rank=5, re_rank=dict(k1=3, k2=1, lambda_value=0.3))
    assert list(both.rankings) == ["plain", "re-ranked"] and both.shown is both.rankings["re-ranked"]
    assert both.plain.mAP == plain.plain.mAP and np.array_equal(both.plain.cmc, plain.plain.cmc)
    assert not torch.equal(both.distances, plain.distances)  # the figures show the re-ranked distances
