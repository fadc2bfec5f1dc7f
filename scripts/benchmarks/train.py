"""train: training images/s of `reid train`'s path vs a conventional loop vs the model-step ceiling (BoT recipe)."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import chosen_device, free_device_memory, sync
from benchmarks.inputs import TemporaryMarket, add_model_arguments, model_overrides

if TYPE_CHECKING:  # annotations only
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, batch_size=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-instances", type=int, default=4, help="K of the PK sampler")
    parser.add_argument("--steps", type=int, default=0, help="limit the steps of each epoch (0: whole epochs)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed first steps of each contender")
    parser.add_argument("--ceiling-steps", type=int, default=100, help="timed steps of the model-step ceiling")
    parser.add_argument("--feat-dim", type=int, default=2048, help="model.feat_dim (the BoT recipe's 2048)")
    parser.add_argument(
        "--pipeline",
        default="gpu",
        choices=("gpu", "cpu", "auto"),
        help="dataset.pipeline of our run (gpu = decoded cache + on-device augmentation)",
    )


def _trainer_devices(device: torch.device) -> tuple[str, Any]:
    return ("gpu", [device.index or 0]) if device.type == "cuda" else ("cpu", 1)


def _time_ours(config: Any, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
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
                sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module) -> None:
            sync(device)
            self.end = time.perf_counter()

    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(config, with_validation=False)
    datamodule.setup("fit")
    module = build_module(config, datamodule.num_classes, load_pretrained=False)
    accelerator, devices = _trainer_devices(device)
    precision = precision_for(config.train.precision, accelerator, devices[0] if accelerator == "gpu" else None)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        max_epochs=args.epochs,
        limit_train_batches=args.steps or 1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[timer],
        benchmark=device.type == "cuda",
    )
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


def _time_reference(
    config: Any,
    device: torch.device,
    args: argparse.Namespace,
    num_classes: int,
    max_steps: int,
    precision: str = "16-mixed",
    channels_last: bool = False,
    workers: int | None = None,
) -> float:
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
    transform = build_train_transform(
        image_size(config), data.pixel_mean, data.pixel_std, data.prob, data.padding, data.re_prob, data.interpolation
    )
    dataset = ImageDataset([r.path for r in records], labels, [r.camid for r in records], transform)
    sampler = PKSampler(labels, data.batch_size, data.num_instances, seed=0)
    on_cuda = device.type == "cuda"
    workers = args.workers if workers is None else workers
    loader = DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=on_cuda,
        drop_last=True,
        persistent_workers=workers > 0,
    )

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
                sync(device)
                start = time.perf_counter()
            if steps >= max_steps:
                break
        if steps >= max_steps:
            break
    sync(device)
    end = time.perf_counter()
    return (steps - args.warmup_steps) * data.batch_size / (end - start)


def _time_ceiling(
    config: Any, device: torch.device, args: argparse.Namespace, num_classes: int, precision: str, steps: int
) -> float:
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
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reid_tao.builders import load_experiment

    device = chosen_device(args.device)
    with TemporaryMarket(args.data) as root:
        overrides = model_overrides(args, root) + [
            f"train.num_epochs={args.epochs}",
            f"dataset.pipeline={args.pipeline}",
            f"model.feat_dim={args.feat_dim}",
        ]
        config = load_experiment(None, overrides)
        ours = _time_ours(config, device, args)
        free_device_memory(device)
        measured_steps = ours["steps"] - args.warmup_steps
        reference = _time_reference(config, device, args, ours["num_classes"], max_steps=ours["steps"])
        free_device_memory(device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        tuned = _time_reference(
            config,
            device,
            args,
            ours["num_classes"],
            max_steps=ours["steps"],
            precision=ours["precision"],
            channels_last=bool(config.train.channels_last),
            workers=cores,
        )
        free_device_memory(device)
        ceiling = _time_ceiling(
            config, device, args, ours["num_classes"], ours["precision"], steps=min(measured_steps, args.ceiling_steps)
        )
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
