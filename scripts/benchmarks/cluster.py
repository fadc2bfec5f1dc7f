"""cluster: pseudo labels of N synthetic crops' features as adaptation clusters them: seconds, peak RSS, purity."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import MARKET_CAMS, cpu_model, peak_rss_mb, rss_mb

if TYPE_CHECKING:  # annotations only
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=50000, help="crops (people with 10-20 images, plus noise)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimensions")
    parser.add_argument("--noise", type=float, default=0.1, help="share of crops of no one")
    parser.add_argument("--eps", default=None, help="adaptation.eps: a radius or auto (default: the spec's)")
    parser.add_argument("--min-samples", type=int, default=None, help="adaptation.min_samples (default: the spec's)")
    parser.add_argument("--k1", type=int, default=None, help="adaptation.k1 (default: the spec's)")
    parser.add_argument("--k2", type=int, default=None, help="adaptation.k2 (default: the spec's)")
    parser.add_argument("--no-cameras", action="store_true", help="no camera centring (adaptation.camera_centring)")
    parser.add_argument("--dense", action="store_true", help="the former dense (N, N) distances instead")
    parser.add_argument("--seed", type=int, default=0)


def make_people(
    num: int,
    dim: int,
    seed: int = 0,
    min_images: int = 10,
    max_images: int = 20,
    noise_fraction: float = 0.1,
    num_cams: int = MARKET_CAMS,
    id_signal: float = 0.45,
    camera_signal: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded unlabeled crops' features as clustering sees them: people with ``min_images``..``max_images``
    images each (an identity centre scaled by ``id_signal`` plus Gaussian noise), ``noise_fraction`` images of
    no one (noise only), every image on a random camera that adds its own look (scaled by ``camera_signal``).
    Returns (features (num, dim), identities (-1: no one), cameras), shuffled."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    num_people_images = num - int(num * noise_fraction)
    sizes = torch.randint(min_images, max_images + 1, (num_people_images // min_images + 1,), generator=generator)
    sizes = sizes[: int((sizes.cumsum(0) <= num_people_images).sum())]
    identities = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    identities = torch.cat([identities, torch.full((num - len(identities),), -1)])
    cameras = torch.randint(0, num_cams, (num,), generator=generator)
    scale = dim**0.5
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), dim, generator=generator), dim=1) * id_signal
    looks = torch.nn.functional.normalize(torch.randn(num_cams, dim, generator=generator), dim=1) * camera_signal
    features = torch.randn(num, dim, generator=generator).add_(looks[cameras], alpha=scale)
    person = identities >= 0
    features[person] += centres[identities[person]] * scale
    order = torch.randperm(num, generator=generator)
    return features[order], identities[order], cameras[order]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Pseudo labels for --num synthetic crops: cluster_features (sparse Jaccard graph + DBSCAN) with the
    adaptation section's defaults unless given, or with --dense what it did before (the dense (N, N) Jaccard
    distances + DBSCAN; a numeric --eps only) for comparison."""
    import numpy as np
    import torch

    from reid_tao.config.schema import AdaptationConfig
    from reid_tao.evaluation.clustering import agreement, camera_centred, cluster_features, purity

    defaults = AdaptationConfig()
    eps = defaults.eps if args.eps is None else args.eps
    settings = dict(
        eps=None if eps == "auto" else float(eps),
        eps_share=defaults.eps_share,
        min_samples=args.min_samples or defaults.min_samples,
        k1=args.k1 or defaults.k1,
        k2=args.k2 or defaults.k2,
    )
    if args.dense and settings["eps"] is None:
        raise SystemExit("cluster --dense: give a numeric --eps (eps auto is for the sparse path)")
    features, identities, cameras = make_people(args.num, args.dim, seed=args.seed, noise_fraction=args.noise)
    cameras = None if args.no_cameras else cameras
    rss_before = rss_mb()
    start = time.perf_counter()
    if args.dense:
        from sklearn.cluster import DBSCAN

        from reid_tao.evaluation.rerank import jaccard_distance

        normalised = torch.nn.functional.normalize(features, dim=1)
        clustered = normalised if cameras is None else camera_centred(normalised, cameras)
        distance = jaccard_distance(clustered, k1=settings["k1"], k2=settings["k2"]).clamp_(min=0.0).numpy()
        labels = DBSCAN(eps=settings["eps"], min_samples=settings["min_samples"], metric="precomputed").fit_predict(
            distance
        )
        del distance
        eps_used = settings["eps"]
    else:
        clustering = cluster_features(features, cameras=cameras, **settings)
        labels, eps_used = clustering.labels, clustering.eps
    seconds = time.perf_counter() - start
    truth = identities.numpy().copy()
    no_one = truth < 0
    truth[no_one] = truth.max(initial=-1) + 1 + np.arange(int(no_one.sum()))  # each its own identity
    return {
        "task": "cluster",
        "path": "dense" if args.dense else "sparse",
        "num": args.num,
        "dim": args.dim,
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        **settings,
        "eps_used": round(eps_used, 4),
        "camera_centring": cameras is not None,
        "people": int(identities.max()) + 1,
        "clusters": int(labels.max()) + 1,
        "outliers": int((labels < 0).sum()),
        "purity": round(purity(labels, truth), 4),
        "agreement": round(agreement(labels, truth), 4),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
