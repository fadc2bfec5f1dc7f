#!/usr/bin/env python
"""Benchmarks for reid_tao on synthetic Market-1501-like data. Each subcommand prints one JSON line.

  python scripts/benchmark.py metrics --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu
  python scripts/benchmark.py rerank  --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu

Add a subcommand by writing a ``run_<task>(args) -> dict`` function and registering it in
``build_parser``; heavy imports happen inside the subcommand so each one loads only what it needs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Callable

MARKET_IDS = 751
MARKET_CAMS = 6


def make_market_like(num_query: int, num_gallery: int, dim: int, num_ids: int = MARKET_IDS,
                     num_cams: int = MARKET_CAMS, seed: int = 0, device: str = "cpu",
                     junk_fraction: float = 0.01, distractor_fraction: float = 0.15,
                     id_signal: float = 0.3) -> dict[str, Any]:
    """Seeded random features with Market-like ids and cameras.

    Gallery: ``junk_fraction`` images with id -1, ``distractor_fraction`` with id 0, the rest spread over
    ``num_ids`` ids (fewer if the gallery is small) so that every id is seen by at least two cameras.
    Queries cycle over the ids with random cameras, so each query id has gallery images on another
    camera. Features are an id centroid scaled by ``id_signal`` plus Gaussian noise (junk and
    distractors are pure noise), so rankings are neither perfect nor random.
    Returns a dict of query/gallery ``features``, ``pids`` and ``camids`` tensors on ``device``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    num_junk = int(num_gallery * junk_fraction)
    num_distractors = int(num_gallery * distractor_fraction)
    num_id_images = num_gallery - num_junk - num_distractors
    num_ids = max(1, min(num_ids, num_id_images // 2))
    if num_id_images < 2 or num_cams < 2:
        raise ValueError("need at least 2 identity images in the gallery and 2 cameras")

    # Gallery ids and cameras: the k-th image of an id is seen by camera (offset + k) % num_cams.
    id_images = torch.arange(num_id_images)
    id_of_image = 1 + id_images % num_ids
    nth_of_id = id_images // num_ids
    cam_offset = torch.randint(0, num_cams, (num_ids + 1,), generator=generator)
    id_cams = (cam_offset[id_of_image] + nth_of_id) % num_cams
    gallery_pids = torch.cat([id_of_image, torch.zeros(num_distractors, dtype=torch.int64),
                              torch.full((num_junk,), -1, dtype=torch.int64)])
    gallery_camids = torch.cat([id_cams, torch.randint(0, num_cams, (num_distractors + num_junk,), generator=generator)])
    shuffle = torch.randperm(num_gallery, generator=generator)
    gallery_pids, gallery_camids = gallery_pids[shuffle], gallery_camids[shuffle]

    id_order = torch.randperm(num_ids, generator=generator) + 1
    query_pids = id_order[torch.arange(num_query) % num_ids]
    query_camids = torch.randint(0, num_cams, (num_query,), generator=generator)

    centroids = torch.randn(num_ids + 1, dim, generator=generator)
    centroids = torch.nn.functional.normalize(centroids, dim=1) * id_signal * dim ** 0.5

    def features(pids: "torch.Tensor") -> "torch.Tensor":
        noise = torch.randn(len(pids), dim, generator=generator)
        return noise + torch.where((pids > 0).unsqueeze(1), centroids[pids.clamp(min=0)], 0.0)

    return {
        "query_features": features(query_pids).to(device),
        "gallery_features": features(gallery_pids).to(device),
        "query_pids": query_pids.to(device),
        "gallery_pids": gallery_pids.to(device),
        "query_camids": query_camids.to(device),
        "gallery_camids": gallery_camids.to(device),
    }


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _best_time(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs of ``fn`` (CUDA synchronised around each), and its last result."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # free the previous result first: it would inflate the peak memory
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def _warm_up(device: str, fn: Callable[[], Any]) -> None:
    """On CUDA, one untimed run first: context creation and kernel loading are not what we measure."""
    if device.startswith("cuda"):
        fn()


def run_metrics(args: argparse.Namespace) -> dict[str, Any]:
    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.metrics import evaluate_rankings

    data = make_market_like(args.num_query, args.num_gallery, args.dim, seed=args.seed, device=args.device)

    def distance() -> Any:
        return pairwise_distance(data["query_features"], data["gallery_features"])

    _warm_up(args.device, distance)
    distance_seconds, distmat = _best_time(distance, args.device, args.repeats)

    def metrics() -> Any:
        return evaluate_rankings(distmat, data["query_pids"], data["gallery_pids"], data["query_camids"],
                                 data["gallery_camids"], max_rank=args.max_rank)

    _warm_up(args.device, metrics)
    metrics_seconds, result = _best_time(metrics, args.device, args.repeats)
    return {
        "task": "metrics",
        "distance_seconds": round(distance_seconds, 4),
        "metrics_seconds": round(metrics_seconds, 4),
        "peak_rss_mb": _peak_rss_mb(),
        "device": args.device,
        "num_query": args.num_query,
        "num_gallery": args.num_gallery,
        "repeats": args.repeats,
        "mAP": round(result.mAP, 4),
        "rank1": round(float(result.cmc[0]), 4),
    }


def run_rerank(args: argparse.Namespace) -> dict[str, Any]:
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

    _warm_up(args.device, rerank)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = _best_time(rerank, args.device, args.repeats)
    peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else 0.0
    return {
        "task": "rerank",
        "seconds": round(seconds, 4),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb,
        "device": args.device,
        "num_query": args.num_query,
        "num_gallery": args.num_gallery,
        "repeats": args.repeats,
    }


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-query", type=int, default=3368, help="query images (Market-1501: 3368)")
    parser.add_argument("--num-gallery", type=int, default=15913, help="gallery images (Market-1501: 15913)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs; the fastest is reported (CUDA also gets one untimed warm-up run)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    metrics = tasks.add_parser("metrics", help="time pairwise_distance and evaluate_rankings")
    _add_data_arguments(metrics)
    metrics.add_argument("--max-rank", type=int, default=50)
    metrics.set_defaults(run=run_metrics)

    rerank = tasks.add_parser("rerank", help="time k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    _add_data_arguments(rerank)
    rerank.set_defaults(run=run_rerank)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    print(json.dumps(args.run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
