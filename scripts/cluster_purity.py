#!/usr/bin/env python
"""How pure adaptation's pseudo identities would be: cluster LABELLED crops the way `reid train` with
adaptation.enable does (BNNeck features, k-reciprocal Jaccard distances, DBSCAN) and compare the clusters with
the identities in the Market-1501 file names. Use it on a labelled sample of your cameras to choose
adaptation.eps and adaptation.k1 for a source model before adapting.

Example (docs/own_cameras.md): python scripts/cluster_purity.py model.pth /data/sample --eps 0.4,0.5,0.6 --k1 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch


def embed(checkpoint: str, records: Sequence, batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """(N, D) BNNeck features of ``records`` by the model in ``checkpoint`` (what adaptation clusters)."""
    from reid_tao.builders import load_trained_model
    from reid_tao.data.datamodule import eval_dataset, eval_loader

    trained = load_trained_model(checkpoint, "checkpoint")
    trained.model.eval()
    loader = eval_loader(eval_dataset(records, trained.preprocessing.eval_transform()), batch_size, num_workers)
    with torch.no_grad():
        return torch.cat([trained.model.neck_feature(batch.images) for batch in loader])


def purity_rows(
    features: torch.Tensor,
    identities: np.ndarray,
    eps_values: Sequence[float],
    k1: int = 30,
    k2: int = 6,
    min_samples: int = 4,
    cameras: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """One row per eps: clusters, outliers, purity (clustered images only), the share of all images whose
    cluster's majority identity is theirs (outliers count as wrong) and the adjusted Rand index of clusters and
    identities (``agreement``: also counts people split over clusters). ``cameras``: cluster camera-centred
    features, as adaptation.camera_centring does."""
    from reid_tao.evaluation.clustering import agreement, cluster_features, purity

    rows = []
    for eps in eps_values:
        clustering = cluster_features(features, eps=eps, min_samples=min_samples, k1=k1, k2=k2, cameras=cameras)
        clustered_purity = purity(clustering.labels, identities)
        kept = int((clustering.labels >= 0).sum())
        rows.append(
            {
                "eps": eps,
                "k1": k1,
                "clusters": clustering.num_clusters,
                "outliers": clustering.num_outliers,
                "purity": clustered_purity,
                "labelled_correctly": clustered_purity * kept / len(identities),
                "agreement": agreement(clustering.labels, identities),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the source model (.pth)")
    parser.add_argument("folder", help="labelled crops with Market-1501 names (identity from the name)")
    parser.add_argument("--eps", default="0.4,0.5,0.6", help="comma-separated adaptation.eps values")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument(
        "--camera-centring", action="store_true", help="cluster camera-centred features (adaptation.camera_centring)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from reid_tao.data.market import scan_market_folder

    records = scan_market_folder(args.folder, "folder")
    features = embed(args.checkpoint, records, num_workers=args.workers)
    identities = np.array([record.pid for record in records])
    print(f"{len(records)} images, {len(set(identities.tolist()))} identities")
    cameras = torch.tensor([record.camid for record in records]) if args.camera_centring else None
    for row in purity_rows(
        features,
        identities,
        [float(value) for value in args.eps.split(",")],
        args.k1,
        args.k2,
        args.min_samples,
        cameras=cameras,
    ):
        print(
            "eps {eps} k1 {k1}: {clusters} clusters, {outliers} outliers, purity {purity:.3f}, "
            "labelled correctly {labelled_correctly:.3f}, adjusted Rand index {agreement:.3f}".format(**row)
        )


if __name__ == "__main__":
    main()
