"""Features in, Market-1501 metrics out: the code shared by `reid evaluate` and validation in training."""
from typing import Optional

import torch

from .distance import pairwise_distance
from .metrics import RankMetrics, evaluate_rankings


def rank_features(query_features: torch.Tensor, gallery_features: torch.Tensor, query_pids, gallery_pids,
                  query_camids, gallery_camids, max_rank: int = 10,
                  distmat: Optional[torch.Tensor] = None) -> RankMetrics:
    """CMC/mAP/mINP with squared Euclidean distance on L2-normalised features (cosine ranking)."""
    if distmat is None:
        distmat = pairwise_distance(query_features, gallery_features)
    return evaluate_rankings(distmat, query_pids, gallery_pids, query_camids, gallery_camids, max_rank=max_rank)
