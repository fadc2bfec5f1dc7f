"""Device selection as TAO does it (num_gpus, gpu_ids, num_nodes), plus train.accelerator."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reid_tao.errors import ConfigError

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "gpu", "cpu")


@dataclass
class DevicePlan:
    accelerator: str  # "gpu" or "cpu"
    devices: list[int] | int
    num_processes: int
    num_nodes: int
    strategy: str


def reconcile_gpu_ids(num_gpus: int, gpu_ids: Sequence[int]) -> list[int]:
    """TAO's rule: when num_gpus and gpu_ids disagree take the larger count; if still inconsistent,
    gpu_ids = range(num_gpus)."""
    gpu_ids = list(gpu_ids)
    count = max(num_gpus, len(gpu_ids))
    if len(gpu_ids) != count:
        gpu_ids = list(range(count))
    return gpu_ids


def plan_devices(
    accelerator: str, num_gpus: int, gpu_ids: Sequence[int], num_nodes: int = 1, section: str = "train"
) -> DevicePlan:
    ids = reconcile_gpu_ids(num_gpus, gpu_ids)
    if list(ids) != list(gpu_ids) or len(ids) != num_gpus:
        log.info(
            "%s.num_gpus=%d and %s.gpu_ids=%s disagree: using gpu_ids=%s",
            section,
            num_gpus,
            section,
            list(gpu_ids),
            ids,
        )
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
        if accelerator == "cpu" and len(ids) * num_nodes > 1:
            # several CPU processes change the global batch (and the result): only on request
            asked = (
                f"{section}.num_gpus={len(ids)}"
                if num_nodes == 1
                else f"{section}.num_gpus={len(ids)} x {section}.num_nodes={num_nodes}"
            )
            raise ConfigError(
                f"{asked} asks for {len(ids) * num_nodes} GPUs but no CUDA GPU is visible; set "
                f"{section}.num_gpus=1{' and ' + section + '.num_nodes=1' if num_nodes > 1 else ''} "
                f"to run on the CPU, or {section}.accelerator=cpu to run "
                f"{len(ids) * num_nodes} CPU processes on purpose"
            )
    if accelerator == "gpu":
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(f"{section}.accelerator=gpu but no CUDA GPU is visible; use {section}.accelerator=cpu")
        if max(ids) >= available:
            raise ConfigError(f"{section}.gpu_ids={ids} asks for GPU {max(ids)} but only {available} are visible")
        devices: list[int] | int = ids
    else:
        devices = len(ids)  # number of CPU processes
    processes = len(ids) * num_nodes
    strategy = "ddp" if processes > 1 else "auto"
    return DevicePlan(accelerator, devices, len(ids), num_nodes, strategy)
