#!/usr/bin/env python
"""Benchmarks for reid_tao on synthetic Market-1501-like data. Each subcommand prints one JSON line.

  python scripts/benchmark.py metrics --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu
  python scripts/benchmark.py rerank  --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu
  python scripts/benchmark.py cluster --num 50000 --dim 512   # pseudo labels of 50,000 crops (adaptation)
  python scripts/benchmark.py train    --data /data/market1501 --device cuda --epochs 2
  python scripts/benchmark.py evaluate --data /data/market1501 --device cuda
  python scripts/benchmark.py onnx     --data /data/market1501 --checkpoint model.pth --accuracy  # int8: both targets
  python scripts/benchmark.py checkpoint --device cuda   # reid_model_latest.pth of ResNet50 + Adam + centers

train and evaluate run on real images: a Market-1501 root, or (no --data) a small synthetic set
generated into a temporary folder (CPU smoke runs: --backbone resnet_18 --height 64 --width 32).

Add a subcommand by writing a ``run_<task>(args) -> dict`` function and registering it in
``build_parser``; heavy imports happen inside the subcommand so each one loads only what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: each subcommand imports what it needs
    from pathlib import Path

    import torch

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
    gallery_camids = torch.cat([id_cams, torch.randint(0, num_cams, (num_distractors + num_junk,),
                                                       generator=generator)])
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


def make_people(num: int, dim: int, seed: int = 0, min_images: int = 10, max_images: int = 20,
                noise_fraction: float = 0.1, num_cams: int = MARKET_CAMS, id_signal: float = 0.45,
                camera_signal: float = 0.5) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
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
    scale = dim ** 0.5
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), dim, generator=generator), dim=1) * id_signal
    looks = torch.nn.functional.normalize(torch.randn(num_cams, dim, generator=generator), dim=1) * camera_signal
    features = torch.randn(num, dim, generator=generator).add_(looks[cameras], alpha=scale)
    person = identities >= 0
    features[person] += centres[identities[person]] * scale
    order = torch.randperm(num, generator=generator)
    return features[order], identities[order], cameras[order]


def _cpu_model() -> str:
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _rss_mb() -> float:
    """Resident memory now (Linux; 0 elsewhere)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    return 0.0


def run_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """Pseudo labels for --num synthetic crops: cluster_features (sparse Jaccard graph + DBSCAN) with the
    adaptation section's defaults unless given, or with --dense what it did before (the dense (N, N) Jaccard
    distances + DBSCAN; a numeric --eps only) for comparison."""
    import numpy as np
    import torch

    from reid_tao.config.schema import AdaptationConfig
    from reid_tao.evaluation.clustering import agreement, camera_centred, cluster_features, purity

    defaults = AdaptationConfig()
    eps = defaults.eps if args.eps is None else args.eps
    settings = dict(eps=None if eps == "auto" else float(eps), eps_share=defaults.eps_share,
                    min_samples=args.min_samples or defaults.min_samples, k1=args.k1 or defaults.k1,
                    k2=args.k2 or defaults.k2)
    if args.dense and settings["eps"] is None:
        raise SystemExit("cluster --dense: give a numeric --eps (eps auto is for the sparse path)")
    features, identities, cameras = make_people(args.num, args.dim, seed=args.seed, noise_fraction=args.noise)
    cameras = None if args.no_cameras else cameras
    rss_before = _rss_mb()
    start = time.perf_counter()
    if args.dense:
        from sklearn.cluster import DBSCAN

        from reid_tao.evaluation.rerank import jaccard_distance

        normalised = torch.nn.functional.normalize(features, dim=1)
        clustered = normalised if cameras is None else camera_centred(normalised, cameras)
        distance = jaccard_distance(clustered, k1=settings["k1"], k2=settings["k2"]).clamp_(min=0.0).numpy()
        labels = DBSCAN(eps=settings["eps"], min_samples=settings["min_samples"],
                        metric="precomputed").fit_predict(distance)
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
        "peak_rss_mb": _peak_rss_mb(),
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
        "cpu": _cpu_model(),
    }


# -- training and end-to-end evaluation ------------------------------------------------------------------
class _TemporaryMarket:
    """``--data`` when given, else a small synthetic Market-1501 set in a temporary folder (removed on exit)."""

    def __init__(self, data: str | None) -> None:
        self.data, self._tmp = data, None

    def __enter__(self) -> "Path":
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


def _sync(device: "torch.device") -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_overrides(args: argparse.Namespace, root: "Path") -> list[str]:
    """The BoT recipe (ResNet, last_stride 1, softmax_triplet + center loss, Adam 3.5e-4) as spec overrides."""
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    gpu = args.device.split(":")[1] if ":" in args.device else "0"
    return [
        f"model.backbone={args.backbone}", "model.last_stride=1", "model.pretrain_choice=''",
        f"model.input_height={args.height}", f"model.input_width={args.width}",
        "model.metric_loss_type=triplet", "model.with_center_loss=true", "dataset.sampler=softmax_triplet",
        f"dataset.train_dataset_dir={root / 'bounding_box_train'}",
        f"dataset.batch_size={args.batch_size}", f"dataset.num_instances={args.num_instances}",
        f"dataset.num_workers={args.workers}", f"train.accelerator={accelerator}", f"train.gpu_ids=[{gpu}]",
        f"evaluate.accelerator={accelerator}", f"evaluate.gpu_ids=[{gpu}]", "train.seed=0",
    ]


def _chosen_device(name: str) -> "torch.device":
    """--device as a torch.device with its index, so synchronize and peak memory read the GPU in use."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _trainer_devices(device: "torch.device") -> tuple[str, Any]:
    return ("gpu", [device.index or 0]) if device.type == "cuda" else ("cpu", 1)


def _time_ours(config: Any, device: "torch.device", args: argparse.Namespace) -> dict[str, Any]:
    """Our training path: the real ReidDataModule + ReidModule in Lightning; steady-state images/s."""
    import pytorch_lightning as pl
    import torch

    from reid_tao.builders import build_datamodule, build_module
    from reid_tao.data.pipelines import DevicePipeline
    from reid_tao.engine.precision import precision_for

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.steps, self.start, self.end = 0, None, None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if self.steps == args.warmup_steps:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module) -> None:
            _sync(device)
            self.end = time.perf_counter()

    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(config, with_validation=False)
    datamodule.setup("fit")
    module = build_module(config, datamodule.num_classes, load_pretrained=False)
    accelerator, devices = _trainer_devices(device)
    precision = precision_for(config.train.precision, accelerator, devices[0] if accelerator == "gpu" else None)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, precision=precision,
                         max_epochs=args.epochs, limit_train_batches=args.steps or 1.0, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[timer], benchmark=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, datamodule=datamodule)
    measured = timer.steps - args.warmup_steps
    if timer.start is None or measured < 1:
        raise SystemExit(f"train benchmark: only {timer.steps} steps ran; lower --warmup-steps or add --epochs")
    pipeline = datamodule.train_pipeline
    cache = pipeline.image_cache if isinstance(pipeline, DevicePipeline) else None
    return {
        "images_per_s": measured * args.batch_size / (timer.end - timer.start),
        # the whole epoch's PK batches, also when --steps capped the ones that ran
        "steps_per_epoch": len(trainer.train_dataloader),
        "steps": timer.steps,
        "precision": precision,
        "pipeline": "gpu" if cache is not None else "cpu",
        "cache_build_seconds": round(cache.build_seconds, 2) if cache is not None else None,
        "cache_placement": cache.placement if cache is not None else None,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else 0.0,
        "num_classes": datamodule.num_classes,
    }


def _time_reference(config: Any, device: "torch.device", args: argparse.Namespace, num_classes: int,
                    max_steps: int, precision: str = "16-mixed", channels_last: bool = False,
                    workers: int | None = None) -> float:
    """What TAO / reid-strong-baseline do: torchvision transforms in DataLoader workers, eager model,
    fp16 autocast + GradScaler on a GPU, loss.item() every step for logging. Returns steady-state images/s.

    The defaults are the reference as it ships (NCHW, fp16, --workers). With ``precision`` = ours,
    ``channels_last`` and ``workers`` = the CPU cores it is the reference tuned with our layout and
    precision, so ours_vs_tuned_reference isolates the data path."""
    import torch
    from torch.utils.data import DataLoader

    from reid_tao.builders import build_loss, build_model, image_size
    from reid_tao.data.datasets import ImageDataset
    from reid_tao.data.layouts import read_split
    from reid_tao.data.records import relabel
    from reid_tao.data.samplers import PKSampler
    from reid_tao.data.transforms import build_train_transform

    data, optim = config.dataset, config.train.optim
    records = read_split(data.train_dataset_dir, "dataset.train_dataset_dir")
    labels, _ = relabel(records)
    transform = build_train_transform(image_size(config), data.pixel_mean, data.pixel_std, data.prob, data.padding,
                                      data.re_prob, data.interpolation)
    dataset = ImageDataset([r.path for r in records], labels, [r.camid for r in records], transform)
    sampler = PKSampler(labels, data.batch_size, data.num_instances, seed=0)
    on_cuda = device.type == "cuda"
    workers = args.workers if workers is None else workers
    loader = DataLoader(dataset, batch_size=data.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=on_cuda, drop_last=True, persistent_workers=workers > 0)

    torch.manual_seed(0)
    model = build_model(config, num_classes, load_pretrained=False).to(device).train()
    criterion = build_loss(config, num_classes, model.feat_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=optim.base_lr, weight_decay=optim.weight_decay)
    center_optimizer = torch.optim.SGD(criterion.own_parameters(), lr=optim.center_lr)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision) if on_cuda else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    channels_last = channels_last and on_cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    steps, start, end = 0, None, None
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for images, targets, _, _ in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits, features = model(images)
                loss = criterion(logits, features, targets)["loss"]
            optimizer.zero_grad(set_to_none=True)
            center_optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.step(center_optimizer)
            scaler.update()
            loss.item()  # the per-step loss meter of the reference trainers
            steps += 1
            if steps == args.warmup_steps:
                _sync(device)
                start = time.perf_counter()
            if steps >= max_steps:
                break
        if steps >= max_steps:
            break
    _sync(device)
    end = time.perf_counter()
    return (steps - args.warmup_steps) * data.batch_size / (end - start)


def _time_ceiling(config: Any, device: "torch.device", args: argparse.Namespace, num_classes: int,
                  precision: str, steps: int) -> float:
    """Forward + backward + optimiser steps on device-resident random tensors (ours' precision and memory
    format): the speed no data path can beat. Returns images/s. It excludes per-step logging: no loss is
    read back (ours reads it once per progress-bar refresh, and the benchmark runs ours without a bar)."""
    import torch

    from reid_tao.builders import build_loss, build_model, optimizer_arguments
    from reid_tao.engine.optim import build_center_optimizer, build_optimizer

    torch.manual_seed(0)
    model = build_model(config, num_classes, load_pretrained=False).to(device).train()
    criterion = build_loss(config, num_classes, model.feat_dim).to(device)
    optimizer = build_optimizer(model, **optimizer_arguments(config))
    center_optimizer = build_center_optimizer(criterion.own_parameters(), config.train.optim.center_lr)
    images = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    if device.type == "cuda" and config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    ids = args.batch_size // args.num_instances
    targets = (torch.randperm(num_classes)[:ids].repeat_interleave(args.num_instances)).to(device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            logits, features = model(images)
            loss = criterion(logits, features, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        center_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        center_optimizer.step()

    for _ in range(args.warmup_steps):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def _free_device_memory(device: "torch.device") -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reid_tao.builders import load_experiment

    device = _chosen_device(args.device)
    with _TemporaryMarket(args.data) as root:
        overrides = _model_overrides(args, root) + [
            f"train.num_epochs={args.epochs}", f"dataset.pipeline={args.pipeline}", f"model.feat_dim={args.feat_dim}"]
        config = load_experiment(None, overrides)
        ours = _time_ours(config, device, args)
        _free_device_memory(device)
        measured_steps = ours["steps"] - args.warmup_steps
        reference = _time_reference(config, device, args, ours["num_classes"], max_steps=ours["steps"])
        _free_device_memory(device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        tuned = _time_reference(config, device, args, ours["num_classes"], max_steps=ours["steps"],
                                precision=ours["precision"], channels_last=bool(config.train.channels_last),
                                workers=cores)
        _free_device_memory(device)
        ceiling = _time_ceiling(config, device, args, ours["num_classes"], ours["precision"],
                                steps=min(measured_steps, args.ceiling_steps))
    rate = ours["images_per_s"]
    return {
        "task": "train",
        "ours_images_per_s": round(rate, 2),
        "reference_images_per_s": round(reference, 2),
        "ceiling_images_per_s": round(ceiling, 2),
        "ours_vs_reference": round(rate / reference, 3),
        # the reference with our precision, channels_last and one loader worker per core: the data-path gain
        "tuned_reference_images_per_s": round(tuned, 2),
        "ours_vs_tuned_reference": round(rate / tuned, 3),
        "tuned_reference_workers": cores,
        "ceiling_includes_step_logging": False,
        "ours_vs_ceiling": round(rate / ceiling, 3),
        # a whole epoch at the measured steady-state rate (not the steps --steps let run)
        "seconds_per_epoch": round(ours["steps_per_epoch"] * args.batch_size / rate, 2),
        "peak_gpu_mb": ours["peak_gpu_mb"],
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cache_build_seconds": ours["cache_build_seconds"],
        "cache_placement": ours["cache_placement"],
        "pipeline": ours["pipeline"],
        "precision": ours["precision"],
        "backbone": args.backbone,
        "feat_dim": args.feat_dim,
        "image_size": [args.height, args.width],
        "batch_size": args.batch_size,
        "reference_workers": args.workers,
        "steps_per_epoch": ours["steps_per_epoch"],
        "measured_steps": measured_steps,
    }


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
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

    device = _chosen_device(args.device)
    with _TemporaryMarket(args.data) as root:
        config = load_experiment(None, _model_overrides(args, root) + [f"dataset.val_batch_size={args.batch_size}"])
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
        _sync(device)
        extracted = time.perf_counter()
        pids = torch.tensor([r.pid for r in query + gallery], device=device)
        camids = torch.tensor([r.camid for r in query + gallery], device=device)
        q = len(query)
        ids = (pids[:q], pids[q:], camids[:q], camids[q:])
        result = evaluate_rankings(pairwise_distance(features[:q], features[q:]), *ids, max_rank=50)
        _sync(device)
        ranked = time.perf_counter()
        reranked = None
        if args.rerank:
            normalised = torch.nn.functional.normalize(features, dim=1)
            reranked = evaluate_rankings(re_ranking(normalised[:q], normalised[q:], k1=20, k2=6, lambda_value=0.3),
                                         *ids, max_rank=50)
        _sync(device)
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
        "peak_rss_mb": _peak_rss_mb(),
        "device": args.device,
        "backbone": args.backbone if not args.checkpoint else "checkpoint",
    }
    if reranked is not None:
        report["reranked_mAP"] = round(reranked.mAP, 4)
        report["reranked_rank1"] = round(float(reranked.cmc[0]), 4)
    return report


# -- exported models: fp32 vs fp16 vs INT8 ONNX through onnxruntime ---------------------------------------
def _onnx_images_per_s(sessions: dict[str, Any], input_name: str, shape: tuple, min_seconds: float,
                       rounds: int) -> dict[str, float]:
    """Embedding throughput of each onnxruntime session on the same preprocessed random batch: two untimed runs
    each, then ``rounds`` rounds that time every session in turn for ``min_seconds / rounds`` (at least three
    runs). images/s = batch size / the median run time: on a shared machine another job's burst lands in a few
    runs of whichever model is running, and the rounds spread slower spells over all of them."""
    import statistics

    import numpy as np

    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for session in sessions.values():
        for _ in range(2):
            session.run(None, {input_name: batch})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            while len(times[name]) < 3 or time.perf_counter() - start < min_seconds / rounds:
                begin = time.perf_counter()
                session.run(None, {input_name: batch})
                times[name].append(time.perf_counter() - begin)
    return {name: shape[0] / statistics.median(runs) for name, runs in times.items()}


def _onnx_accuracy(run: Callable, query: list, gallery: list, preprocessing: Any) -> dict[str, float]:
    """Rank-1 / mAP of the embeddings ``run`` (float32 batch -> embeddings) gives query and gallery."""
    import numpy as np
    import torch

    from reid_tao.deploy.precision import image_batches
    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.metrics import evaluate_rankings

    records = query + gallery
    features = torch.from_numpy(np.concatenate([run(batch) for batch in
                                                image_batches([r.path for r in records], preprocessing, 64)]))
    pids = torch.tensor([r.pid for r in records])
    camids = torch.tensor([r.camid for r in records])
    q = len(query)
    result = evaluate_rankings(pairwise_distance(features[:q], features[q:]), pids[:q], pids[q:], camids[:q],
                               camids[q:], max_rank=10)
    return {"rank1": round(float(result.cmc[0]), 4), "mAP": round(float(result.mAP), 4)}


CPU_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products: what makes INT8 fast on a CPU


def _cpu_description() -> dict[str, Any]:
    """The CPU's model name and which of the INT8-relevant instruction sets /proc/cpuinfo lists."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"cpu": "unknown (no /proc/cpuinfo)"}
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"cpu": names[0] if names else "unknown", "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "int8_flags": sorted(flags & set(CPU_INT8_FLAGS))}


def parse_int8_variant(text: str) -> tuple[str, Any]:
    """``NAME=TARGET[,FIELD=VALUE...]`` -> (NAME, that target's Int8Recipe with FIELDs replaced), e.g.
    ``qop=cpu,quant_format=QOperator`` or ``allint8=cpu,float_layers=`` (nothing in float; several layers are
    joined with +). Booleans are true/false."""
    from reid_tao.deploy.precision import INT8_TARGETS, check_recipe

    name, _, rest = text.partition("=")
    base, *pairs = rest.split(",")
    if not name or base not in INT8_TARGETS:
        raise SystemExit(f"--int8-variant {text!r}: expected NAME=TARGET[,FIELD=VALUE...] with TARGET one of "
                         f"{', '.join(INT8_TARGETS)}")
    recipe = INT8_TARGETS[base]
    changes: dict[str, Any] = {}
    for pair in pairs:
        field, _, value = pair.partition("=")
        if field not in recipe._fields:
            raise SystemExit(f"--int8-variant {text!r}: unknown field {field!r}; fields: {', '.join(recipe._fields)}")
        current = getattr(recipe, field)
        if isinstance(current, bool):
            if value not in ("true", "false"):
                raise SystemExit(f"--int8-variant {text!r}: {field} is true or false, got {value!r}")
            changes[field] = value == "true"
        elif isinstance(current, tuple):
            changes[field] = tuple(part for part in value.split("+") if part)
        else:
            changes[field] = value
    recipe = recipe._replace(**changes)
    try:
        check_recipe(recipe)
    except ValueError as error:
        raise SystemExit(f"--int8-variant {text!r}: {error}")
    return f"int8_{name}", recipe


def _int8_recipes(args: argparse.Namespace) -> dict[str, Any]:
    """Label -> recipe of every INT8 file to build: int8_<target> for --int8-targets, then the variants."""
    from reid_tao.deploy.precision import INT8_TARGETS

    recipes = {}
    for target in filter(None, args.int8_targets.split(",")):
        if target not in INT8_TARGETS:
            raise SystemExit(f"--int8-targets: {target!r} is none of {', '.join(INT8_TARGETS)}")
        recipes[f"int8_{target}"] = INT8_TARGETS[target]
    recipes.update(parse_int8_variant(text) for text in args.int8_variant)
    return recipes


def run_onnx(args: argparse.Namespace) -> dict[str, Any]:
    """fp32, fp16 and INT8 ONNX of one model, side by side: images/s of embedding with onnxruntime on the CPU
    at each batch size, cosine parity with fp32, and (--accuracy) Rank-1 / mAP on the query/gallery split.
    INT8 is built once per export.int8_target in --int8-targets (int8_tensorrt, int8_cpu) and per
    --int8-variant (a target's recipe with some choices changed: what the cpu target was chosen from)."""
    import random
    import tempfile
    from pathlib import Path

    import onnxruntime
    import torch

    from reid_tao.builders import build_model, load_experiment, load_trained_model, preprocessing_for
    from reid_tao.data.layouts import read_split, split_images
    from reid_tao.deploy import precision
    from reid_tao.deploy.export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from reid_tao.deploy.runtime import quiet_onnxruntime

    quiet_onnxruntime()  # its warnings carry colour escape codes into piped output
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    data_types = [name for name in args.data_types.split(",") if name != "int8"]
    recipes = _int8_recipes(args) if "int8" in args.data_types.split(",") else {}
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    with _TemporaryMarket(args.data) as root, tempfile.TemporaryDirectory(prefix="reid_onnx_bench_") as scratch:
        if args.checkpoint:
            model, preprocessing, _ = load_trained_model(args.checkpoint, "--checkpoint")
        else:
            overrides = [f"model.feat_dim={args.feat_dim}", f"model.gem_pooling={str(args.gem_pooling).lower()}"]
            config = load_experiment(None, _model_overrides(args, root) + overrides)
            torch.manual_seed(0)
            model, preprocessing = build_model(config, 751, load_pretrained=False), preprocessing_for(config)
        model = model.cpu().eval()
        files = {"fp32": Path(scratch) / "fp32.onnx"}
        export_onnx(model, files["fp32"], preprocessing.input_size, 17)
        calibration_paths = split_images(str(args.calibration or root / "bounding_box_train"), "--calibration")
        random.Random(0).shuffle(calibration_paths)
        held_out, calibration_paths = calibration_paths[:64], calibration_paths[64:64 + args.calibration_images]
        float_nodes, parity = {}, {}
        reference = precision.session_runner(files["fp32"], INPUT_NAME, OUTPUT_NAME)
        parity_batches = list(precision.image_batches(held_out, preprocessing, 32))
        converters = {name: precision.converter(name) for name in data_types if name != "fp32"}
        converters.update({label: functools.partial(precision.quantize_int8, recipe=recipe)
                           for label, recipe in recipes.items()})
        for name, convert in converters.items():
            files[name] = Path(scratch) / f"{name}.onnx"
            calibration = precision.Calibration(INPUT_NAME, precision.image_batches(calibration_paths, preprocessing))
            float_nodes[name] = convert(files["fp32"], files[name], calibration)
            candidate = precision.session_runner(files[name], INPUT_NAME, OUTPUT_NAME)
            mean, minimum = precision.cosine_parity(reference, candidate, parity_batches)
            parity[name] = {"cosine_mean": round(mean, 5), "cosine_min": round(minimum, 5)}

        input_size = preprocessing.input_size
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                                   f"ORT_ENABLE_{args.session_optimization.upper()}")
        if args.threads:
            options.intra_op_num_threads = args.threads
        sessions, load_seconds = {}, {}
        for name in files:
            start = time.perf_counter()
            sessions[name] = onnxruntime.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
            load_seconds[name] = round(time.perf_counter() - start, 3)
        speed: dict[str, dict[str, float]] = {name: {} for name in files}
        for size in batch_sizes:
            rates = _onnx_images_per_s(sessions, INPUT_NAME, (size, 3, *input_size), args.min_seconds, args.rounds)
            for name, rate in rates.items():
                speed[name][str(size)] = round(rate, 1)
        del sessions
        report: dict[str, Any] = {
            "task": "onnx", "images_per_s": speed, "parity_vs_fp32": parity, "float_nodes": float_nodes,
            "int8_recipes": {label: recipe._asdict() for label, recipe in recipes.items()},
            "session_load_seconds": load_seconds, "timing": f"median run time, {args.rounds} interleaved rounds",
            "model": args.checkpoint or f"{args.backbone} random weights", "input_size": list(preprocessing.input_size),
            "calibration_images": len(calibration_paths), "onnxruntime": onnxruntime.__version__,
            "threads": args.threads or "onnxruntime default", "session_optimization": args.session_optimization,
            "cpu_count": os.cpu_count(), **_cpu_description(),
            "load_average_at_end": [round(load, 2) for load in os.getloadavg()],  # other jobs on a shared machine
        }
        if "fp32" in speed:
            report["speedup_vs_fp32"] = {name: {size: round(rate / speed["fp32"][size], 2)
                                                for size, rate in rates.items()}
                                         for name, rates in speed.items() if name != "fp32"}
        if args.accuracy:
            query = read_split(str(args.query or root / "query"), "--query")
            gallery = read_split(str(args.gallery or root / "bounding_box_test"), "--gallery")
            runners = {name: precision.session_runner(path, INPUT_NAME, OUTPUT_NAME) for name, path in files.items()}
            if args.checkpoint:
                runners = {"pth": lambda batch: model(torch.from_numpy(batch)).detach().numpy(), **runners}
            with torch.no_grad():
                report["accuracy"] = {name: _onnx_accuracy(run, query, gallery, preprocessing)
                                      for name, run in runners.items()}
            report["num_query"], report["num_gallery"] = len(query), len(gallery)
    return report


def run_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """How long training waits for one epoch-end checkpoint of the BoT ResNet50 (model, Adam state, 751 x 2048
    centers): written in the training thread (AtomicCheckpointIO, before issue 22) and from a host snapshot in
    a background thread (BackgroundCheckpointIO, what `reid train` uses). A shared disk makes these noisy."""
    import tempfile
    from pathlib import Path

    import torch

    from reid_tao.builders import build_model, load_experiment
    from reid_tao.engine.checkpoint import AtomicCheckpointIO, BackgroundCheckpointIO

    device = _chosen_device(args.device)
    config = load_experiment(None, ["model.pretrain_choice=''", f"model.backbone={args.backbone}",
                                    f"model.feat_dim={args.feat_dim}"])
    model = build_model(config, MARKET_IDS, load_pretrained=False).to(device)
    centers = torch.zeros(MARKET_IDS, model.feat_dim, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([*model.parameters(), centers])
    for parameter in optimizer.param_groups[0]["params"]:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # creates the Adam moments: the checkpoint holds three copies of the weights
    checkpoint = {"state_dict": {**model.state_dict(), "loss.center_loss.centers": centers.detach()},
                  "optimizer_states": [optimizer.state_dict()]}
    report: dict[str, Any] = {"task": "checkpoint", "device": str(device), "backbone": args.backbone,
                              "feat_dim": model.feat_dim}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "reid_model_latest.pth"
        for name, io in (("foreground", AtomicCheckpointIO()), ("background", BackgroundCheckpointIO())):
            blocked, total = [], []
            for _ in range(args.repeats):
                _sync(device)
                start = time.perf_counter()
                io.save_checkpoint(checkpoint, path)
                blocked.append(time.perf_counter() - start)
                io.teardown()  # waits for a background write
                total.append(time.perf_counter() - start)
            report[f"{name}_blocks_s"] = round(min(blocked), 3)
            report[f"{name}_total_s"] = round(min(total), 3)
        report["size_mb"] = round(path.stat().st_size / 2**20, 1)
    return report


def _add_model_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--data", default=None,
                        help="Market-1501 root (bounding_box_train, bounding_box_test, query); default: a small "
                             "synthetic set generated into a temporary folder")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backbone", default="resnet_50", help="model.backbone (resnet_18 for CPU smoke runs)")
    parser.add_argument("--height", type=int, default=256, help="model.input_height")
    parser.add_argument("--width", type=int, default=128, help="model.input_width")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers (reference loop / evaluation)")


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

    cluster = tasks.add_parser("cluster", help="pseudo labels of N synthetic crops' features: seconds, peak RSS")
    cluster.add_argument("--num", type=int, default=50000, help="crops (people with 10-20 images, plus noise)")
    cluster.add_argument("--dim", type=int, default=512, help="feature dimensions")
    cluster.add_argument("--noise", type=float, default=0.1, help="share of crops of no one")
    cluster.add_argument("--eps", default=None, help="adaptation.eps: a radius or auto (default: the spec's)")
    cluster.add_argument("--min-samples", type=int, default=None, help="adaptation.min_samples (default: the spec's)")
    cluster.add_argument("--k1", type=int, default=None, help="adaptation.k1 (default: the spec's)")
    cluster.add_argument("--k2", type=int, default=None, help="adaptation.k2 (default: the spec's)")
    cluster.add_argument("--no-cameras", action="store_true", help="no camera centring (adaptation.camera_centring)")
    cluster.add_argument("--dense", action="store_true", help="the former dense (N, N) distances instead")
    cluster.add_argument("--seed", type=int, default=0)
    cluster.set_defaults(run=run_cluster, repeats=1)

    train = tasks.add_parser("train", help="training images/s: ours vs a conventional loop vs the model-step "
                                           "ceiling (BoT recipe)")
    _add_model_arguments(train, batch_size=64)
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--num-instances", type=int, default=4, help="K of the PK sampler")
    train.add_argument("--steps", type=int, default=0, help="limit the steps of each epoch (0: whole epochs)")
    train.add_argument("--warmup-steps", type=int, default=10, help="untimed first steps of each contender")
    train.add_argument("--ceiling-steps", type=int, default=100, help="timed steps of the model-step ceiling")
    train.add_argument("--feat-dim", type=int, default=2048, help="model.feat_dim (the BoT recipe's 2048)")
    train.add_argument("--pipeline", default="gpu", choices=("gpu", "cpu", "auto"),
                       help="dataset.pipeline of our run (gpu = decoded cache + on-device augmentation)")
    train.set_defaults(run=run_train, repeats=1)

    evaluate = tasks.add_parser("evaluate", help="Market end to end: query + gallery features, distances, metrics")
    _add_model_arguments(evaluate, batch_size=256)
    evaluate.add_argument("--checkpoint", default=None, help="a reid checkpoint (default: random weights)")
    evaluate.add_argument("--rerank", action="store_true", help="also k-reciprocal re-ranking")
    evaluate.set_defaults(run=run_evaluate, repeats=1, num_instances=4)

    onnx = tasks.add_parser("onnx", help="fp32 vs fp16 vs INT8 ONNX: onnxruntime images/s, parity, accuracy")
    _add_model_arguments(onnx, batch_size=64)
    onnx.add_argument("--checkpoint", default=None, help="a reid checkpoint (default: random weights, speed only)")
    onnx.add_argument("--feat-dim", type=int, default=256, help="model.feat_dim of the random-weight model")
    onnx.add_argument("--data-types", default="fp32,fp16,int8", help="comma-separated export.data_type values")
    onnx.add_argument("--int8-targets", default="tensorrt,cpu",
                      help="comma-separated export.int8_target values to build an INT8 file for (int8_<target>)")
    onnx.add_argument("--int8-variant", action="append", default=[], metavar="NAME=TARGET[,FIELD=VALUE...]",
                      help="also an INT8 file from TARGET's recipe with FIELDs changed (Int8Recipe in "
                           "reid_tao/deploy/precision.py), reported as int8_NAME; repeatable. E.g. "
                           "qop=cpu,quant_format=QOperator  rr=cpu,reduce_range=true  all=cpu,float_layers=")
    onnx.add_argument("--gem-pooling", action="store_true", help="model.gem_pooling of the random-weight model")
    onnx.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes to time")
    onnx.add_argument("--calibration", default=None,
                      help="INT8 calibration images, folder or list file (default: <data>/bounding_box_train); "
                           "64 of them are held out for the parity check")
    onnx.add_argument("--calibration-images", type=int, default=200, help="export.calibration_images")
    onnx.add_argument("--min-seconds", type=float, default=10.0, help="timed seconds per file and batch size")
    onnx.add_argument("--rounds", type=int, default=3,
                      help="the files are timed in turn, this many times (images/s from the median run time)")
    onnx.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    onnx.add_argument("--session-optimization", default="all", choices=("basic", "extended", "all"),
                      help="graph optimisation level of the timed sessions (onnxruntime's default: all)")
    onnx.add_argument("--accuracy", action="store_true", help="also Rank-1 / mAP of each model on query/gallery")
    onnx.add_argument("--query", default=None, help="query folder or list file (default: <data>/query)")
    onnx.add_argument("--gallery", default=None, help="gallery folder or list file (default: <data>/bounding_box_test)")
    onnx.set_defaults(run=run_onnx, repeats=1, num_instances=4)
    checkpoint = tasks.add_parser("checkpoint", help="epoch-end checkpoint write: training thread vs background")
    checkpoint.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    checkpoint.add_argument("--backbone", default="resnet_50", help="model.backbone")
    checkpoint.add_argument("--feat-dim", type=int, default=2048, help="model.feat_dim (the BoT recipe's 2048)")
    checkpoint.add_argument("--repeats", type=int, default=3, help="timed writes of each kind (fastest reported)")
    checkpoint.add_argument("--dir", default=None, help="folder to write in (default: the system temp folder)")
    checkpoint.set_defaults(run=run_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    print(json.dumps(args.run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
