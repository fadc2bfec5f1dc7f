"""The fast training data path: decode every image once, augment whole batches on the training device.

The CPU path decodes, resizes and augments every image in DataLoader workers each epoch; on a fast GPU
that work, not the model, sets the pace. Here:

* :class:`DecodedImageCache` decodes each training image once and resizes it to the model input size
  with the CPU path's own resize (PIL + torchvision ``Resize``), into one uint8 tensor (N, 3, H, W):
  1.3 GB for Market-1501 at 256x128. It lives in GPU memory when it fits, else in pinned host memory.
* :class:`DeviceAugment` applies flip, pad + random crop, normalisation and random erasing to a uint8
  batch in one batched pass on the batch's device, with the same parameter distributions as
  :func:`reid_tao.data.transforms.build_train_transform` (torchvision), and the same values whenever
  the random draws agree (resize and normalisation are computed exactly as the CPU path does).
* The loader only yields indices (an :class:`~reid_tao.data.batch.IndexBatch`, see :class:`IndexDataset`);
  the data module's ``on_after_batch_transfer`` turns them into a ``Batch`` of images with
  :func:`augment_batch`.

Randomness comes from a ``torch.Generator`` on the batch's device, seeded per batch from the
:class:`~reid_tao.data.datasets.SeededSampler` seed of the batch's first sample (a function of seed,
epoch, rank and position) and the process rank (:func:`~reid_tao.data.seeding.derive_seed`): a resumed run
replays the same augmentation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from reid_tao.data.batch import Batch, IndexBatch
from reid_tao.data.datasets import load_rgb
from reid_tao.data.seeding import derive_seed
from reid_tao.data.transforms import INTERPOLATIONS

log = logging.getLogger(__name__)

# dataset.pipeline: "cached" decodes once into a DecodedImageCache and augments batches on the training device
# (CUDA or CPU); "workers" decodes and augments every image in DataLoader workers (see pipelines.py).
PIPELINES = ("auto", "cached", "workers")


# The decoded cache may take at most this share of the available host memory when "auto" picks it on a CPU.
HOST_CACHE_MEMORY_SHARE = 0.5


def resolve_pipeline(
    pipeline: str,
    device: torch.device | None = None,
    cache_bytes: int | None = None,
    available_bytes: int | None = None,
) -> str:
    """The pipeline to use. "auto" is "cached" (decoded cache + batched augmentation) on a CUDA training
    device (device unknown: when CUDA is available), and on a CPU too when the cache (``cache_bytes``,
    all copies) fits in HOST_CACHE_MEMORY_SHARE of the available memory: there it trains several times
    faster than loader workers that decode every image every epoch. Else "workers"."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline={pipeline!r} is not one of {', '.join(PIPELINES)}")
    if pipeline != "auto":
        return pipeline
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return "cached"
    if cache_bytes is None:
        return "workers"
    available = available_memory_bytes() if available_bytes is None else available_bytes
    return "cached" if available is not None and cache_bytes <= HOST_CACHE_MEMORY_SHARE * available else "workers"


def cache_bytes_for(num_images: int, size: tuple[int, int]) -> int:
    """Bytes of a :class:`DecodedImageCache` of ``num_images`` at ``size`` (uint8 RGB)."""
    return num_images * size[0] * size[1] * 3


def available_memory_bytes() -> int | None:
    """Memory the system can still give (MemAvailable), or None when it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# -- decoded-image cache -------------------------------------------------------------------------------
MAX_DECODE_THREADS = 32


def decode_threads(local_processes: int = 1) -> int:
    """Threads for building the cache in one of ``local_processes`` processes on this machine: the CPUs
    this process may run on (its affinity set, which launchers and containers restrict), shared by the
    local processes that all build their cache at the same time; at least 1, at most 32."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODE_THREADS, cpus // max(1, local_processes)))


def decode_resized(path: str, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """One image as the CPU path sees it after ``Resize``: uint8 (H, W, 3) array; DataError if unreadable."""
    resized = T.Resize(size, interpolation=INTERPOLATIONS[interpolation])(load_rgb(path))
    return np.asarray(resized, dtype=np.uint8)


class DecodedImageCache:
    """All training images, decoded and resized once: ``images`` is uint8 (N, 3, H, W).

    :meth:`build` stores it in channels_last memory format (pixel-interleaved, as images decode), which
    makes building several times faster and batches come out channels_last for free.

    Build with :meth:`build`; :meth:`gather` returns a batch on the device of the indices, moving the
    cache there on first use when it fits in ``max_device_fraction`` of the free device memory, else
    pinning it in host memory and copying each batch asynchronously.
    """

    def __init__(self, images: torch.Tensor, build_seconds: float = 0.0, max_device_fraction: float = 0.25):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.build_seconds = build_seconds
        self.max_device_fraction = max_device_fraction
        self._placed_for: torch.device | None = None

    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        size: tuple[int, int],
        interpolation: str = "bilinear",
        num_threads: int | None = None,
        max_device_fraction: float = 0.25,
    ) -> DecodedImageCache:
        """Decode and resize ``paths`` in a thread pool (PIL releases the GIL while decoding and resizing)."""
        start = time.perf_counter()
        height, width = size
        images = torch.empty((len(paths), 3, height, width), dtype=torch.uint8, memory_format=torch.channels_last)
        pixels = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) view of the same memory
        threads = max(1, num_threads or decode_threads())
        chunk = max(1, min(256, math.ceil(len(paths) / (4 * threads))))

        def decode_range(first: int) -> None:
            for index in range(first, min(first + chunk, len(paths))):
                pixels[index] = decode_resized(paths[index], size, interpolation)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(decode_range, range(0, len(paths), chunk)):
                pass  # re-raises the first DataError of a worker
        seconds = time.perf_counter() - start
        log.info(
            "decoded %d training images into a %.0f MB uint8 cache in %.1f s (%d thread%s)",
            len(paths),
            images.numel() / 2**20,
            seconds,
            threads,
            "" if threads == 1 else "s",
        )
        return cls(images, build_seconds=seconds, max_device_fraction=max_device_fraction)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    @property
    def placement(self) -> str:
        """Where the images are: "device" (GPU memory), "pinned" (page-locked host memory) or "host"."""
        if self.images.device.type != "cpu":
            return "device"
        return "pinned" if self.images.is_pinned() else "host"

    def place_for(self, device: torch.device) -> None:
        """Move the cache to ``device`` if it fits there, else pin it in host memory when ``device`` is CUDA."""
        device = torch.device(device)
        if self._placed_for == device or device.type == "cpu":
            self._placed_for = device
            return
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.nbytes < self.max_device_fraction * free:
                self.images = self.images.to(device)
            else:
                log.info(
                    "image cache (%.0f MB) exceeds %.0f%% of the %.0f MB free on %s: keeping it in pinned host memory",
                    self.nbytes / 2**20,
                    100 * self.max_device_fraction,
                    free / 2**20,
                    device,
                )
                self.images = self.images.cpu().pin_memory()
        else:  # other accelerators: no free-memory query, try the device
            self.images = self.images.to(device)
        self._placed_for = device

    def gather(self, indices: torch.Tensor, host_indices: np.ndarray | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) images of ``indices``, on ``indices.device``.

        host_indices: the same indices in host memory. A cache in host memory gathers with them, so the
        step needs no device-to-host copy of ``indices`` (a sync that stalls the CPU until the GPU has
        caught up); without them, ``indices`` are copied back."""
        self.place_for(indices.device)
        if self.images.device == indices.device:
            return self.images[indices]  # keeps the cache's memory format
        batch = self.gather_on_host(torch.from_numpy(host_indices) if host_indices is not None else indices.cpu())
        return batch.to(indices.device, non_blocking=batch.is_pinned())

    def gather_on_host(self, host_indices: torch.Tensor) -> torch.Tensor:
        """The images of CPU ``host_indices`` from a host cache, in pinned memory when the cache is pinned
        (the copy to the device is then asynchronous)."""
        batch = torch.empty(
            (host_indices.numel(), *self.images.shape[1:]),
            dtype=torch.uint8,
            memory_format=_memory_format(self.images),
            pin_memory=self.images.is_pinned(),
        )
        return torch.index_select(self.images, 0, host_indices, out=batch)


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


# -- batched augmentation --------------------------------------------------------------------------------
@dataclass
class AugmentParams:
    """Per-sample random draws of one batch (all on the batch's device).

    flip: bool (B,); offsets: int64 (B, 2) crop (top, left) in the padded image, 0..2*padding;
    erase: bool (B,), whether a box is erased; boxes: int64 (B, 4) as (top, left, height, width).
    """

    flip: torch.Tensor
    offsets: torch.Tensor
    erase: torch.Tensor
    boxes: torch.Tensor


class DeviceAugment(nn.Module):
    """Training augmentation of a uint8 batch (B, 3, H, W) on its own device, with no per-sample loop.

    Same steps and distributions as the CPU transform: horizontal flip with ``flip_prob``; zero pad by
    ``padding`` and crop back to (H, W) at uniform integer offsets 0..2*padding; ``x / 255`` then
    ``(x - mean) / std``; with ``erase_prob`` a box of area ``erase_scale`` of the image and aspect
    ratio log-uniform in ``erase_ratio`` (up to ``erase_attempts`` tries to fit, as torchvision) set to 0
    (= pixel_mean in image space). Returns float32, in channels_last memory format if asked.
    """

    def __init__(
        self,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        flip_prob: float = 0.5,
        padding: int = 10,
        erase_prob: float = 0.5,
        erase_scale: tuple[float, float] = (0.02, 0.4),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        erase_attempts: int = 10,
        channels_last: bool = False,
    ):
        super().__init__()
        self.pixel_mean, self.pixel_std = [float(m) for m in pixel_mean], [float(s) for s in pixel_std]
        self.flip_prob, self.padding, self.erase_prob = float(flip_prob), int(padding), float(erase_prob)
        self.erase_scale, self.erase_ratio = tuple(erase_scale), tuple(erase_ratio)
        self.erase_attempts, self.channels_last = int(erase_attempts), channels_last
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None, channels_last: bool | None = None
    ) -> torch.Tensor:
        """Augment ``images``; ``channels_last`` overrides the constructor's output memory format."""
        params = self.sample_params(images.shape[0], images.shape[2], images.shape[3], images.device, generator)
        return self.apply(images, params, channels_last)

    def sample_params(
        self, batch: int, height: int, width: int, device: torch.device, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw every random parameter of a batch at once."""

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, device=device, generator=generator)

        flip = uniform(batch) < self.flip_prob
        offsets = torch.randint(0, 2 * self.padding + 1, (batch, 2), device=device, generator=generator)
        erase, boxes = self._sample_boxes(batch, height, width, uniform)
        return AugmentParams(flip=flip, offsets=offsets, erase=erase, boxes=boxes)

    def _sample_boxes(self, batch: int, height: int, width: int, uniform) -> tuple[torch.Tensor, torch.Tensor]:
        attempts = self.erase_attempts
        low, high = self.erase_scale
        log_low, log_high = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        area = (height * width) * (low + (high - low) * uniform(batch, attempts)).double()
        aspect = torch.exp(log_low + (log_high - log_low) * uniform(batch, attempts)).double()
        box_h = torch.round(torch.sqrt(area * aspect)).long()  # round half to even, as Python's round
        box_w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (box_h < height) & (box_w < width)
        first_fit = fits.int().argmax(dim=1, keepdim=True)  # torchvision takes the first attempt that fits
        box_h, box_w = box_h.gather(1, first_fit).squeeze(1), box_w.gather(1, first_fit).squeeze(1)
        erase = (uniform(batch) < self.erase_prob) & fits.any(dim=1)
        free_rows, free_cols = height - box_h + 1, width - box_w + 1
        top = torch.minimum((uniform(batch).double() * free_rows).long(), free_rows - 1)
        left = torch.minimum((uniform(batch).double() * free_cols).long(), free_cols - 1)
        return erase, torch.stack([top, left, box_h, box_w], dim=1)

    def apply(self, images: torch.Tensor, params: AugmentParams, channels_last: bool | None = None) -> torch.Tensor:
        """Flip + pad/crop (one gather), normalise exactly like ToTensor + Normalize, then erase."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"DeviceAugment expects uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        batch, _, height, width = images.shape
        device = images.device
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        # Output pixel (y, x) is pixel (y + dy - p, x + dx - p) of the flipped image, 0 outside it.
        src_rows = rows.unsqueeze(0) + params.offsets[:, :1] - self.padding  # (B, H)
        src_cols = cols.unsqueeze(0) + params.offsets[:, 1:] - self.padding  # (B, W)
        inside = ((src_rows >= 0) & (src_rows < height)).unsqueeze(2) & (
            (src_cols >= 0) & (src_cols < width)
        ).unsqueeze(1)  # (B, H, W)
        src_cols = torch.where(params.flip.unsqueeze(1), width - 1 - src_cols, src_cols)
        sample = torch.arange(batch, device=device).view(batch, 1, 1)
        src_rows, src_cols = src_rows.clamp(0, height - 1), src_cols.clamp(0, width - 1)
        # Advanced indexing around the channel slice gives (B, H, W, C): channels_last once permuted.
        picked = images[sample, :, src_rows.unsqueeze(2), src_cols.unsqueeze(1)]
        picked = picked.masked_fill_(~inside.unsqueeze(3), 0).permute(0, 3, 1, 2)
        if not (self.channels_last if channels_last is None else channels_last):
            picked = picked.contiguous()

        mean, std = self._mean_std(device)
        out = picked.float().div_(255).sub_(mean).div_(std)

        top, left, box_h, box_w = params.boxes.unbind(1)
        in_rows = (rows.unsqueeze(0) >= top.unsqueeze(1)) & (rows.unsqueeze(0) < (top + box_h).unsqueeze(1))
        in_cols = (cols.unsqueeze(0) >= left.unsqueeze(1)) & (cols.unsqueeze(0) < (left + box_w).unsqueeze(1))
        erased = params.erase.view(batch, 1, 1) & in_rows.unsqueeze(2) & in_cols.unsqueeze(1)
        return out.masked_fill_(erased.unsqueeze(1), 0.0)

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:  # created once per device: no host-to-device copy per batch
            self._stats[device] = (
                torch.tensor(self.pixel_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                torch.tensor(self.pixel_std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
            )
        return self._stats[device]


# -- seeding -----------------------------------------------------------------------------------------------
def batch_generator(batch_seed: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from the batch seed and the process rank (ranks must not share draws)."""
    return torch.Generator(device=device).manual_seed(derive_seed(batch_seed, rank))


# -- the index-only loader --------------------------------------------------------------------------------
class IndexDataset(Dataset):
    """Items are (index, label, camera id, sample seed): no image is read in the loader.

    Takes the ``(index, seed)`` pairs of :class:`~reid_tao.data.datasets.SeededSampler` (or plain indices,
    seed 0); :func:`collate_index_batch` keeps the first sample's seed as the batch seed.
    """

    def __init__(self, labels: Sequence[int], camids: Sequence[int]):
        self.labels, self.camids = list(labels), list(camids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item) -> tuple[int, int, int, int]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        return index, self.labels[index], self.camids[index], seed


def collate_index_batch(items: list[tuple[int, int, int, int]]) -> IndexBatch:
    """An :class:`IndexBatch`; the batch seed (the first sample's) stays a Python int, and the host copy of
    the indices a numpy array (neither is moved to the device)."""
    indices, labels, camids, seeds = zip(*items)
    return IndexBatch(
        indices=torch.tensor(indices, dtype=torch.int64),
        pids=torch.tensor(labels, dtype=torch.int64),
        camids=torch.tensor(camids, dtype=torch.int64),
        seed=int(seeds[0]),
        host_indices=np.asarray(indices, dtype=np.int64),
    )


def augment_batch(
    batch: IndexBatch,
    cache: DecodedImageCache,
    augment: DeviceAugment,
    rank: int = 0,
    channels_last: bool | None = None,
) -> Batch:
    """Index batch (already on the device) -> :class:`Batch` of augmented images."""
    images = cache.gather(batch.indices, batch.host_indices)
    generator = batch_generator(batch.seed, rank, batch.indices.device)
    return Batch(
        images=augment(images, generator, channels_last), pids=batch.pids, camids=batch.camids, indices=batch.indices
    )
