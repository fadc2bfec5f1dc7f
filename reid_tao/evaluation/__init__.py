"""Evaluation: distances, Market-1501 rank metrics, k-reciprocal re-ranking, plots."""
from .distance import pairwise_distance
from .metrics import RankMetrics, evaluate_rankings, top_ranked
from .rerank import re_ranking

__all__ = ["RankMetrics", "evaluate_rankings", "pairwise_distance", "re_ranking", "top_ranked"]
