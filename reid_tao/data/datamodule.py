"""LightningDataModule for Market-1501 style folders (train, query, gallery)."""
import logging
import os
from typing import List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import DataError
from .datasets import ImageDataset, SeededSampler, ShardSampler
from .gpu_pipeline import DecodedImageCache, DeviceAugment, IndexDataset, augment_batch, collate_index_batch, \
    resolve_pipeline
from .market import ImageRecord, relabel, scan_market_folder, summary_table
from .samplers import PKSampler
from .transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


def eval_dataset(records: Sequence[ImageRecord], transform) -> ImageDataset:
    return ImageDataset([r.path for r in records], [r.pid for r in records], [r.camid for r in records], transform)


def eval_loader(dataset: ImageDataset, batch_size: int, num_workers: int, sampler=None) -> DataLoader:
    """Ordered loader for feature extraction; any dataset size works (also smaller than one batch)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=effective_workers(num_workers), pin_memory=torch.cuda.is_available())


def effective_workers(requested: int) -> int:
    """More loader processes than CPU cores only adds overhead."""
    return min(requested, os.cpu_count() or 1)


class ReidDataModule(pl.LightningDataModule):
    def __init__(self, train_dir: Optional[str], query_dir: Optional[str] = None, gallery_dir: Optional[str] = None,
                 image_size: Tuple[int, int] = (256, 128), pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 pixel_std: Sequence[float] = (0.226, 0.226, 0.226), batch_size: int = 64,
                 val_batch_size: int = 128, num_workers: int = 8, sampler: str = "softmax_triplet",
                 num_instances: int = 4, flip_prob: float = 0.5, padding: int = 10, erase_prob: float = 0.5,
                 interpolation: str = "bilinear", seed: int = 0, pipeline: str = "cpu", channels_last: bool = False):
        """pipeline: "cpu" decodes and augments in loader workers; "gpu" decodes once into a
        :class:`DecodedImageCache` and augments batches on the training device (also works on CPU);
        "auto" is "gpu" when training on CUDA. channels_last: "gpu" pipeline batches on CUDA come in
        channels_last memory format (set it when the model trains channels_last: no conversion copy)."""
        super().__init__()
        self.train_dir, self.query_dir, self.gallery_dir = train_dir, query_dir, gallery_dir
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.sampler, self.num_instances, self.seed = num_workers, sampler, num_instances, seed
        self.train_transform = build_train_transform(image_size, pixel_mean, pixel_std, flip_prob, padding,
                                                     erase_prob, interpolation)
        self.eval_transform = build_eval_transform(image_size, pixel_mean, pixel_std, interpolation)
        resolve_pipeline(pipeline)  # reject unknown names now, resolve "auto" once the device is known
        self.pipeline, self.image_size, self.interpolation = pipeline, tuple(image_size), interpolation
        self.device_augment = DeviceAugment(pixel_mean, pixel_std, flip_prob, padding, erase_prob)
        self.channels_last = channels_last
        self.image_cache: Optional[DecodedImageCache] = None
        self.train_records: List[ImageRecord] = []
        self.query_records: List[ImageRecord] = []
        self.gallery_records: List[ImageRecord] = []
        self.train_labels: List[int] = []

    @property
    def num_classes(self) -> int:
        return len(set(self.train_labels))

    @property
    def has_validation(self) -> bool:
        return bool(self.query_records and self.gallery_records)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_records:
            return
        self.train_records = scan_market_folder(self.train_dir, "dataset.train_dataset_dir")
        self.train_labels, _ = relabel(self.train_records)
        if self.num_classes < 2:
            raise DataError(f"dataset.train_dataset_dir: {self.train_dir} holds a single identity; "
                            "re-identification training needs at least 2 (Market-1501 has 751)")
        if self.sampler != "softmax" and self.num_classes < self.batch_size // self.num_instances:
            raise DataError(f"dataset.train_dataset_dir: {self.num_classes} identities are fewer than the "
                            f"{self.batch_size // self.num_instances} per PK batch (dataset.batch_size / "
                            "dataset.num_instances); lower dataset.batch_size")
        subsets = {"train": self.train_records}
        if self.query_dir and self.gallery_dir:
            self.query_records = scan_market_folder(self.query_dir, "dataset.query_dataset_dir")
            self.gallery_records = scan_market_folder(self.gallery_dir, "dataset.test_dataset_dir")
            subsets.update(query=self.query_records, gallery=self.gallery_records)
        log.info("dataset summary\n%s", summary_table(subsets))

    def _rank_and_world(self) -> Tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _uses_device_pipeline(self) -> bool:
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        return resolve_pipeline(self.pipeline, device) == "gpu"

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        camids = [r.camid for r in self.train_records]
        on_device = self._uses_device_pipeline()
        if on_device:
            # Only indices travel through the loader; on_after_batch_transfer makes the images.
            dataset = IndexDataset(self.train_labels, camids)
            if self.image_cache is None:
                self.image_cache = DecodedImageCache.build([r.path for r in self.train_records], self.image_size,
                                                           self.interpolation)
        else:
            dataset = ImageDataset([r.path for r in self.train_records], self.train_labels, camids,
                                   self.train_transform)
        if self.sampler == "softmax":
            base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed,
                                      drop_last=True)
        else:
            base = PKSampler(self.train_labels, self.batch_size, self.num_instances, seed=self.seed, rank=rank,
                             world_size=world_size)
        sampler = SeededSampler(base, self.seed, rank)
        # Lightning sets the epoch only after creating the first iterator; set it now for resumed runs.
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        if on_device:
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                              collate_fn=collate_index_batch)
        workers = effective_workers(self.num_workers)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                          drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches of the "gpu" pipeline arrive as indices: gather and augment them on the device."""
        trainer = self.trainer
        if self.image_cache is None or trainer is None or not trainer.training:
            return batch
        return augment_batch(batch, self.image_cache, self.device_augment, rank=trainer.global_rank,
                             channels_last=self.channels_last and batch[0].is_cuda)

    def val_dataloader(self) -> DataLoader:
        """Each process extracts a contiguous shard; the module gathers the features in dataset order."""
        records = self.query_records + self.gallery_records
        rank, world_size = self._rank_and_world()
        return eval_loader(eval_dataset(records, self.eval_transform), self.val_batch_size, self.num_workers,
                           sampler=ShardSampler(len(records), rank, world_size))
