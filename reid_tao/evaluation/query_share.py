"""Rank metrics of one process's share of the queries, computed from features block by block.

Distributed validation splits the queries over the processes: each ranks its share against the whole
gallery and the per-query sums (:class:`~reid_tao.evaluation.metrics.RankSums`) are added over the
processes. No process holds the full (Q, G) distance matrix; each holds at most ``block_elements``
distances at a time (MSMT17's 11,659 x 82,161 float32 matrix alone is 3.8 GB).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from reid_tao.evaluation.distance import pairwise_distance
from reid_tao.evaluation.metrics import RankSums, rank_sums

DEFAULT_BLOCK_ELEMENTS = 1 << 26  # 256 MB of float32 distances per block


def query_share_sums(
    query_features: Tensor,
    gallery_features: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    query_camids: Tensor,
    gallery_camids: Tensor,
    max_rank: int,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> RankSums:
    """:class:`RankSums` of these queries (any number, also none) against the whole gallery."""
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1, got {block_elements}")
    num_query, num_gallery = query_features.shape[0], gallery_features.shape[0]
    total = RankSums(0.0, 0.0, np.zeros(int(max_rank), dtype=np.int64), 0, 0, num_gallery)
    rows = max(1, block_elements // max(1, num_gallery))
    for begin in range(0, num_query, rows):
        end = min(begin + rows, num_query)
        distances = pairwise_distance(query_features[begin:end], gallery_features)
        total = total + rank_sums(
            distances, query_pids[begin:end], gallery_pids, query_camids[begin:end], gallery_camids, max_rank=max_rank
        )
    return total
