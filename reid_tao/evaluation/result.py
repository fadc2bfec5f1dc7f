"""Everything an evaluation computes, once: the rankings (plain and re-ranked), per-query AP, which queries
have a true match, and the distances the figures are drawn from. The outputs (metrics.json, plots, status,
log lines) are small functions of an :class:`EvaluationResult` (see ``reid_tao.tasks.evaluate_outputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reid_tao.evaluation.distance import pairwise_distance
from reid_tao.evaluation.metrics import RankMetrics, evaluate_rankings
from reid_tao.evaluation.rerank import re_ranking

PLAIN, RE_RANKED = "plain", "re-ranked"


@dataclass(frozen=True)
class EvaluationResult:
    """One evaluation of query against gallery features.

    ``query`` / ``gallery`` are the images' records in feature order (anything with ``path``, ``pid``,
    ``camid`` and ``shown_pid``); ``rankings`` holds "plain" and, with re-ranking, "re-ranked";
    ``distances`` are those of the last ranking (the one the figures show); ``valid_query`` marks the
    queries with a true match on another camera, computed once by the ranking.
    """

    query: Sequence[Any]
    gallery: Sequence[Any]
    features: Tensor  # (Q + G, D), queries first
    query_pids: Tensor
    gallery_pids: Tensor
    query_camids: Tensor
    gallery_camids: Tensor
    rankings: dict[str, RankMetrics]
    distances: Tensor
    valid_query: np.ndarray
    max_rank: int  # ranks reported (cmc in metrics.json, curves, sampled-match columns)

    @property
    def plain(self) -> RankMetrics:
        return self.rankings[PLAIN]

    @property
    def shown_name(self) -> str:
        """The ranking the figures show: the re-ranked one when re-ranking ran."""
        return RE_RANKED if RE_RANKED in self.rankings else PLAIN

    @property
    def shown(self) -> RankMetrics:
        return self.rankings[self.shown_name]

    @property
    def ids(self) -> tuple:
        """(query_pids, gallery_pids, query_camids, gallery_camids), the order the ranking functions take."""
        return self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids


def evaluate_features(
    features: Tensor,
    query: Sequence[Any],
    gallery: Sequence[Any],
    max_rank: int,
    re_rank: Mapping[str, float] | None = None,
) -> EvaluationResult:
    """Rank the queries (the first ``len(query)`` rows of ``features``) against the gallery.

    Args:
        features: (Q + G, D) features of ``query`` then ``gallery``.
        query, gallery: records with ``pid`` and ``camid`` (and ``path`` / ``shown_pid`` for the figures).
        max_rank: ranks to report; the rankings keep at least 10 (Rank-10 is always reported).
        re_rank: keyword arguments of :func:`re_ranking` (k1, k2, lambda_value), or None for no re-ranking.
    """
    q = len(query)
    pids = torch.tensor([r.pid for r in list(query) + list(gallery)])
    camids = torch.tensor([r.camid for r in list(query) + list(gallery)])
    ids = (pids[:q], pids[q:], camids[:q], camids[q:])
    ranks = max(max_rank, 10)
    distances = pairwise_distance(features[:q], features[q:])
    rankings = {PLAIN: evaluate_rankings(distances, *ids, max_rank=ranks)}
    if re_rank is not None:
        distances = re_ranking(
            torch.nn.functional.normalize(features[:q], dim=1),
            torch.nn.functional.normalize(features[q:], dim=1),
            **re_rank,
        )
        rankings[RE_RANKED] = evaluate_rankings(distances, *ids, max_rank=ranks)
    return EvaluationResult(
        query=query,
        gallery=gallery,
        features=features,
        query_pids=ids[0],
        gallery_pids=ids[1],
        query_camids=ids[2],
        gallery_camids=ids[3],
        rankings=rankings,
        distances=distances,
        valid_query=rankings[PLAIN].valid_query,
        max_rank=max_rank,
    )
