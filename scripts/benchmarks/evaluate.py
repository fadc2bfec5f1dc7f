"""evaluate: Market end to end: query + gallery features, distances, metrics (and re-ranking)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import chosen_device, peak_rss_mb, sync
from benchmarks.inputs import TemporaryMarket, add_model_arguments, model_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, batch_size=256)
    parser.add_argument("--checkpoint", default=None, help="a reid checkpoint (default: random weights)")
    parser.add_argument("--rerank", action="store_true", help="also k-reciprocal re-ranking")
    parser.set_defaults(num_instances=4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Market end to end: query + gallery features through the evaluate task's extractor, then distances
    and metrics (and re-ranking with --rerank) on the device."""
    import torch

    from reid_tao.builders import build_model, load_experiment, load_trained_model, preprocessing_for
    from reid_tao.data.datamodule import eval_dataset
    from reid_tao.data.layouts import read_split
    from reid_tao.engine.extractor import extract
    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.metrics import evaluate_rankings
    from reid_tao.evaluation.rerank import re_ranking

    device = chosen_device(args.device)
    with TemporaryMarket(args.data) as root:
        config = load_experiment(None, model_overrides(args, root) + [f"dataset.val_batch_size={args.batch_size}"])
        query = read_split(str(root / "query"), "query")
        gallery = read_split(str(root / "bounding_box_test"), "bounding_box_test")
        preprocessing = preprocessing_for(config)
        if args.checkpoint:
            model, preprocessing, _ = load_trained_model(args.checkpoint, "--checkpoint")
        else:
            torch.manual_seed(0)
            model = build_model(config, num_classes=751, load_pretrained=False)  # random weights: timing only
        dataset = eval_dataset(query + gallery, preprocessing.eval_transform())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        features = extract(model, dataset, config.evaluate, args.batch_size, args.workers)
        features = features.to(device)
        sync(device)
        extracted = time.perf_counter()
        pids = torch.tensor([r.pid for r in query + gallery], device=device)
        camids = torch.tensor([r.camid for r in query + gallery], device=device)
        q = len(query)
        ids = (pids[:q], pids[q:], camids[:q], camids[q:])
        result = evaluate_rankings(pairwise_distance(features[:q], features[q:]), *ids, max_rank=50)
        sync(device)
        ranked = time.perf_counter()
        reranked = None
        if args.rerank:
            normalised = torch.nn.functional.normalize(features, dim=1)
            reranked = evaluate_rankings(
                re_ranking(normalised[:q], normalised[q:], k1=20, k2=6, lambda_value=0.3), *ids, max_rank=50
            )
        sync(device)
        end = time.perf_counter()
    report = {
        "task": "evaluate",
        "seconds": round(end - start, 3),
        "feature_seconds": round(extracted - start, 3),
        "metrics_seconds": round(ranked - extracted, 3),  # distances + plain CMC/mAP
        "rerank_seconds": round(end - ranked, 3),  # re-ranking + its CMC/mAP (0 without --rerank)
        "images_per_s": round(len(dataset) / (extracted - start), 1),
        "num_query": q,
        "num_gallery": len(gallery),
        "mAP": round(result.mAP, 4),
        "rank1": round(float(result.cmc[0]), 4),
        "rerank": bool(args.rerank),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "device": args.device,
        "backbone": args.backbone if not args.checkpoint else "checkpoint",
    }
    if reranked is not None:
        report["reranked_mAP"] = round(reranked.mAP, 4)
        report["reranked_rank1"] = round(float(reranked.cmc[0]), 4)
    return report
