"""The two training data paths behind one interface; the data module picks one once the device is known.

* :class:`WorkerPipeline` ("workers"): DataLoader workers decode and augment each image (torchvision).
* :class:`DevicePipeline` ("cached"): images are decoded once into a :class:`DecodedImageCache`; the loader
  yields :class:`~reid_tao.data.batch.IndexBatch` es and :meth:`on_after_batch_transfer` gathers and
  augments them on the training device (:class:`DeviceAugment`; also works on CPU).

Both give the same batches (labels, cameras, indices) for the same sampler, and images drawn from the
same augmentation distributions.
"""

from collections.abc import Sequence
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from reid_tao.data.batch import Batch, IndexBatch
from reid_tao.data.cached_pipeline import (
    DecodedImageCache,
    DeviceAugment,
    IndexDataset,
    augment_batch,
    collate_index_batch,
)
from reid_tao.data.datasets import ImageDataset, effective_workers
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.data.records import ImageRecord
from reid_tao.data.settings import AugmentSettings
from reid_tao.data.transforms import build_train_transform


class TrainPipeline(Protocol):
    name: str

    def loader(
        self, records: Sequence[ImageRecord], labels: Sequence[int], sampler: Sampler, batch_size: int
    ) -> DataLoader:
        """The training loader over ``records`` (with training ``labels``) in ``sampler`` order."""

    def on_after_batch_transfer(self, batch: Batch | IndexBatch, rank: int) -> Batch:
        """A training batch once on the training device, as the model takes it."""


class WorkerPipeline:
    """Decode + augment in DataLoader worker processes with torchvision transforms."""

    name = "workers"

    def __init__(self, preprocessing: Preprocessing, augment: AugmentSettings, num_workers: int):
        p = preprocessing
        self.transform = build_train_transform(
            p.input_size,
            p.pixel_mean,
            p.pixel_std,
            augment.flip_prob,
            augment.padding,
            augment.erase_prob,
            p.interpolation,
        )
        self.num_workers = num_workers

    def loader(
        self, records: Sequence[ImageRecord], labels: Sequence[int], sampler: Sampler, batch_size: int
    ) -> DataLoader:
        dataset = ImageDataset([r.path for r in records], labels, [r.camid for r in records], self.transform)
        workers = effective_workers(self.num_workers)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def on_after_batch_transfer(self, batch: Batch, rank: int) -> Batch:
        return batch


class DevicePipeline:
    """Decode once into a :class:`DecodedImageCache`, gather + augment whole batches on the device.

    channels_last: batches on CUDA come in channels_last memory format (set it when the model trains
    channels_last: no conversion copy). pin_memory: collate the index batches in pinned memory (set it
    when training on CUDA: their copy to the device is then asynchronous, with no per-step sync).
    decode_threads: threads that build the cache (default: :func:`decode_threads` of one process)."""

    name = "cached"

    def __init__(
        self,
        preprocessing: Preprocessing,
        augment: AugmentSettings,
        channels_last: bool = False,
        pin_memory: bool = False,
        decode_threads: int | None = None,
    ):
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
        self.preprocessing = preprocessing
        self.augment = DeviceAugment(
            preprocessing.pixel_mean, preprocessing.pixel_std, augment.flip_prob, augment.padding, augment.erase_prob
        )
        self.channels_last, self.pin_memory, self.decode_threads = channels_last, pin_memory, decode_threads
        self.image_cache: DecodedImageCache | None = None

    def loader(
        self, records: Sequence[ImageRecord], labels: Sequence[int], sampler: Sampler, batch_size: int
    ) -> DataLoader:
        if self.image_cache is None:
            self.image_cache = DecodedImageCache.build(
                [r.path for r in records],
                self.preprocessing.input_size,
                self.preprocessing.interpolation,
                num_threads=self.decode_threads,
            )
        # Only indices travel through the loader; on_after_batch_transfer makes the images.
        dataset = IndexDataset(labels, [r.camid for r in records])
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=collate_index_batch,
            pin_memory=self.pin_memory,
        )

    def on_after_batch_transfer(self, batch: IndexBatch, rank: int) -> Batch:
        return augment_batch(
            batch, self.image_cache, self.augment, rank=rank, channels_last=self.channels_last and batch.indices.is_cuda
        )
