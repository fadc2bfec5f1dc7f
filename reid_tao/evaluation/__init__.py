"""Evaluation: distances, Market-1501 rank metrics, k-reciprocal re-ranking, plots."""

from reid_tao.evaluation.distance import pairwise_distance
from reid_tao.evaluation.metrics import RankMetrics, evaluate_rankings, top_ranked
from reid_tao.evaluation.rerank import re_ranking

__all__ = ["RankMetrics", "evaluate_rankings", "pairwise_distance", "re_ranking", "top_ranked"]
