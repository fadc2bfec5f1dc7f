"""rerank: time k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) on Market-sized synthetic features."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import best_time, peak_rss_mb, warm_up
from benchmarks.inputs import add_feature_arguments, make_market_like


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_feature_arguments(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    try:
        from reid_tao.evaluation.rerank import re_ranking
    except ImportError as error:
        raise SystemExit(f"rerank benchmark: cannot import reid_tao.evaluation.rerank.re_ranking ({error})")

    data = make_market_like(args.num_query, args.num_gallery, args.dim, seed=args.seed, device=args.device)
    on_cuda = args.device.startswith("cuda")
    # The usual setting: re-ranking on L2-normalised features (normalised outside the timing).
    query = torch.nn.functional.normalize(data["query_features"], dim=1)
    gallery = torch.nn.functional.normalize(data["gallery_features"], dim=1)

    def rerank() -> Any:
        return re_ranking(query, gallery, k1=20, k2=6, lambda_value=0.3)

    warm_up(args.device, rerank)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = best_time(rerank, args.device, args.repeats)
    peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else 0.0
    return {
        "task": "rerank",
        "seconds": round(seconds, 4),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb,
        "device": args.device,
        "num_query": args.num_query,
        "num_gallery": args.num_gallery,
        "repeats": args.repeats,
    }
