"""Torch datasets over image records, and the sampler wrapper that makes augmentation reproducible."""

import itertools
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from reid_tao.data.batch import Batch
from reid_tao.data.seeding import derive_seeds
from reid_tao.errors import DataError


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's convert("RGB") clamps 16-bit grey (PNG modes I;16* and I) at 255, turning the image
    white; those are scaled from 0..65535 to 0..255 first."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return as_rgb(image)
    except Exception as error:  # PIL raises several types for truncated or corrupt files
        raise DataError(
            f"cannot read image {path} ({type(error).__name__}: {error}); remove or replace the file"
        ) from None


def effective_workers(requested: int) -> int:
    """More loader processes than CPU cores only adds overhead."""
    return min(requested, os.cpu_count() or 1)


class ImageDataset(Dataset):
    """Items are :class:`Batch` es of one sample: (image tensor, label, camera id, index); the default
    collate stacks them into a :class:`Batch`.

    An index may come as ``(index, seed)`` from :class:`SeededSampler`: the transform then draws its
    randomness from that seed only, so an epoch's augmentation does not depend on worker count,
    prefetching or where training was resumed.
    """

    def __init__(
        self, paths: Sequence[str], labels: Sequence[int], camids: Sequence[int], transform: Callable | None = None
    ):
        self.paths, self.labels, self.camids = list(paths), list(labels), list(camids)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = load_rgb(self.paths[index])
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image = self.transform(image)
        return Batch(image, self.labels[index], self.camids[index], index)


class SeededSampler(Sampler):
    """Wraps an epoch-aware sampler and pairs each index with a seed derived from
    (seed, epoch, process rank, position) (:func:`~reid_tao.data.seeding.derive_seeds`): processes of a
    multi-process run draw different augmentations.

    :meth:`start_at` makes one epoch start at a given position (resuming mid-epoch): the skipped positions
    keep their numbers, so the rest of the epoch has the same indices and seeds as an uninterrupted one."""

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0):
        self.sampler, self.seed, self.rank, self.epoch = sampler, seed, rank, 0
        self._start: tuple[int, int] | None = None  # (epoch, first position)

    def start_at(self, epoch: int, position: int) -> None:
        """Iterating epoch ``epoch`` starts at ``position`` (a sample count); other epochs start at 0.
        ``__len__`` stays the full epoch length (Lightning measures it once)."""
        if position < 0:
            raise ValueError(f"SeededSampler.start_at: position must be >= 0, got {position}")
        self._start = (int(epoch), int(position))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = derive_seeds(len(self.sampler), self.seed, self.epoch, self.rank).tolist()  # one per position
        skip = self._start[1] if self._start is not None and self._start[0] == self.epoch else 0
        yield from itertools.islice(zip((int(index) for index in self.sampler), seeds, strict=True), skip, None)


def shard_range(length: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """(start, stop) of process ``rank``'s contiguous share of range(length); the shares of all ranks tile it."""
    return length * rank // world_size, length * (rank + 1) // world_size


class ShardSampler(Sampler):
    """A contiguous, unpadded shard of range(length) for one process: over all ranks every index is owned
    exactly once (DistributedSampler pads with duplicates, which would double-count in the metrics).

    A rank whose shard is empty (fewer items than processes) still yields one item, borrowed from the
    last shard: Lightning skips a loop that has no batches, hooks included, so that rank would never
    reach the collectives the other ranks wait in. Callers drop borrowed items with :meth:`owns`.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length = length
        self.start, self.stop = shard_range(length, rank, world_size)

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def _indices(self) -> range:
        if self.start == self.stop and self.length > 0:
            return range(self.length - 1, self.length)  # borrowed: see the class docstring
        return range(self.start, self.stop)

    def owns(self, indices: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the ``indices`` in this rank's own shard (False for a borrowed item)."""
        return (indices >= self.start) & (indices < self.stop)
