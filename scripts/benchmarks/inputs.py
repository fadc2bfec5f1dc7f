"""What the modes run on: seeded synthetic features (metrics, rerank), and for the modes that run a model on
real images (train, evaluate, onnx) a Market-1501 root or a generated one, and the BoT recipe as spec overrides."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from benchmarks.common import MARKET_CAMS, MARKET_IDS

if TYPE_CHECKING:  # annotations only
    from pathlib import Path

    import torch


def make_market_like(
    num_query: int,
    num_gallery: int,
    dim: int,
    num_ids: int = MARKET_IDS,
    num_cams: int = MARKET_CAMS,
    seed: int = 0,
    device: str = "cpu",
    junk_fraction: float = 0.01,
    distractor_fraction: float = 0.15,
    id_signal: float = 0.3,
) -> dict[str, Any]:
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
    gallery_pids = torch.cat(
        [id_of_image, torch.zeros(num_distractors, dtype=torch.int64), torch.full((num_junk,), -1, dtype=torch.int64)]
    )
    gallery_camids = torch.cat(
        [id_cams, torch.randint(0, num_cams, (num_distractors + num_junk,), generator=generator)]
    )
    shuffle = torch.randperm(num_gallery, generator=generator)
    gallery_pids, gallery_camids = gallery_pids[shuffle], gallery_camids[shuffle]

    id_order = torch.randperm(num_ids, generator=generator) + 1
    query_pids = id_order[torch.arange(num_query) % num_ids]
    query_camids = torch.randint(0, num_cams, (num_query,), generator=generator)

    centroids = torch.randn(num_ids + 1, dim, generator=generator)
    centroids = torch.nn.functional.normalize(centroids, dim=1) * id_signal * dim**0.5

    def features(pids: torch.Tensor) -> torch.Tensor:
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


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-query", type=int, default=3368, help="query images (Market-1501: 3368)")
    parser.add_argument("--num-gallery", type=int, default=15913, help="gallery images (Market-1501: 15913)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs; the fastest is reported (CUDA also gets one untimed warm-up run)",
    )


class TemporaryMarket:
    """``--data`` when given, else a small synthetic Market-1501 set in a temporary folder (removed on exit)."""

    def __init__(self, data: str | None) -> None:
        self.data, self._tmp = data, None

    def __enter__(self) -> Path:
        from pathlib import Path

        if self.data:
            return Path(self.data)
        import tempfile

        from reid_tao.data.synthetic import generate_synthetic_market

        self._tmp = tempfile.TemporaryDirectory(prefix="reid_benchmark_")
        return generate_synthetic_market(Path(self._tmp.name) / "market")

    def __exit__(self, *exc: Any) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def model_overrides(args: argparse.Namespace, root: Path) -> list[str]:
    """The BoT recipe (ResNet, last_stride 1, softmax_triplet + center loss, Adam 3.5e-4) as spec overrides."""
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    gpu = args.device.split(":")[1] if ":" in args.device else "0"
    return [
        f"model.backbone={args.backbone}",
        "model.last_stride=1",
        "model.pretrain_choice=''",
        f"model.input_height={args.height}",
        f"model.input_width={args.width}",
        "model.metric_loss_type=triplet",
        "model.with_center_loss=true",
        "dataset.sampler=softmax_triplet",
        f"dataset.train_dataset_dir={root / 'bounding_box_train'}",
        f"dataset.batch_size={args.batch_size}",
        f"dataset.num_instances={args.num_instances}",
        f"dataset.num_workers={args.workers}",
        f"train.accelerator={accelerator}",
        f"train.gpu_ids=[{gpu}]",
        f"evaluate.accelerator={accelerator}",
        f"evaluate.gpu_ids=[{gpu}]",
        "train.seed=0",
    ]


def add_model_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help="Market-1501 root (bounding_box_train, bounding_box_test, query); default: a small "
        "synthetic set generated into a temporary folder",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backbone", default="resnet_50", help="model.backbone (resnet_18 for CPU smoke runs)")
    parser.add_argument("--height", type=int, default=256, help="model.input_height")
    parser.add_argument("--width", type=int, default=128, help="model.input_width")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers (reference loop / evaluation)")
