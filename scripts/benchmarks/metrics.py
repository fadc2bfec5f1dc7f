"""metrics: time pairwise_distance and evaluate_rankings on Market-sized synthetic features."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import best_time, peak_rss_mb, warm_up
from benchmarks.inputs import add_feature_arguments, make_market_like


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_feature_arguments(parser)
    parser.add_argument("--max-rank", type=int, default=50)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.metrics import evaluate_rankings

    data = make_market_like(args.num_query, args.num_gallery, args.dim, seed=args.seed, device=args.device)

    def distance() -> Any:
        return pairwise_distance(data["query_features"], data["gallery_features"])

    warm_up(args.device, distance)
    distance_seconds, distmat = best_time(distance, args.device, args.repeats)

    def metrics() -> Any:
        return evaluate_rankings(
            distmat,
            data["query_pids"],
            data["gallery_pids"],
            data["query_camids"],
            data["gallery_camids"],
            max_rank=args.max_rank,
        )

    warm_up(args.device, metrics)
    metrics_seconds, result = best_time(metrics, args.device, args.repeats)
    return {
        "task": "metrics",
        "distance_seconds": round(distance_seconds, 4),
        "metrics_seconds": round(metrics_seconds, 4),
        "peak_rss_mb": peak_rss_mb(),
        "device": args.device,
        "num_query": args.num_query,
        "num_gallery": args.num_gallery,
        "repeats": args.repeats,
        "mAP": round(result.mAP, 4),
        "rank1": round(float(result.cmc[0]), 4),
    }
