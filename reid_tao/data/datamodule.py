"""LightningDataModule for re-identification splits (train, query, gallery) in any known layout."""

import logging
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, DistributedSampler

from reid_tao.data.cached_pipeline import available_memory_bytes, cache_bytes_for, decode_threads, resolve_pipeline
from reid_tao.data.datasets import ImageDataset, SeededSampler, ShardSampler, effective_workers
from reid_tao.data.layouts import read_split, read_unlabeled
from reid_tao.data.pipelines import DevicePipeline, TrainPipeline, WorkerPipeline
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.data.records import ImageRecord, relabel, summary_table
from reid_tao.data.samplers import CyclingSampler, PKSampler, SubsetSampler
from reid_tao.data.seeding import derive_seed
from reid_tao.data.settings import AugmentSettings, LoaderSettings
from reid_tao.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "ReidDataModule",
    "Preprocessing",
    "MARKET_PREPROCESSING",
    "AugmentSettings",
    "LoaderSettings",
    "eval_dataset",
    "eval_loader",
    "effective_workers",
    "TARGET",
    "SOURCE",
]

# The keys of a training batch with a labelled source stream (domain adaptation): a dict of two Batches.
TARGET, SOURCE = "target", "source"
SOURCE_FIELD = "adaptation.source_dataset_dir"
SOURCE_STREAM = 1  # derives the source stream's sampling and augmentation seeds from the run's seed

MARKET_PREPROCESSING = Preprocessing(
    input_size=(256, 128), pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.226, 0.226, 0.226)
)


def eval_dataset(records: Sequence[ImageRecord], transform) -> ImageDataset:
    return ImageDataset([r.path for r in records], [r.pid for r in records], [r.camid for r in records], transform)


def eval_loader(dataset: ImageDataset, batch_size: int, num_workers: int, sampler=None) -> DataLoader:
    """Ordered loader for feature extraction; any dataset size works (also smaller than one batch)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=effective_workers(num_workers),
        pin_memory=torch.cuda.is_available(),
    )


def _pipeline_reason(chosen: str, device: torch.device | None, cache_bytes: int) -> str:
    where = device.type if device is not None else "this machine"
    if chosen == "cached":
        return (
            f"decoded-image cache ({cache_bytes / 2**20:.0f} MB) with batched augmentation on {where} "
            "(the 'cached' pipeline)"
        )
    available = available_memory_bytes()
    shown = f"{available / 2**30:.1f} GB available" if available is not None else "unknown available memory"
    return (
        f"loader workers decode every image (the 'workers' pipeline): the decoded cache "
        f"({cache_bytes / 2**30:.1f} GB) would not fit in half of the {shown}"
    )


class ReidDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train_dir: str | None,
        query_dir: str | None = None,
        gallery_dir: str | None = None,
        preprocessing: Preprocessing = MARKET_PREPROCESSING,
        augment: AugmentSettings = AugmentSettings(),
        loader: LoaderSettings = LoaderSettings(),
        pipeline: str = "workers",
        channels_last: bool = False,
        layout: str = "auto",
        unlabeled: bool = False,
        source_dir: str | None = None,
    ):
        """Splits are read with :func:`~reid_tao.data.layouts.read_split` in ``layout`` (a name in
        :data:`~reid_tao.data.layouts.LAYOUTS`, or "auto": detected from each path); with ``unlabeled`` the
        training split is read as unlabeled images (:func:`~reid_tao.data.layouts.read_unlabeled`, in the same
        ``layout``), labelled by clustering.

        pipeline: "workers" decodes and augments in loader workers; "cached" decodes once into a
        :class:`DecodedImageCache` and augments batches on the training device (CUDA or CPU);
        "auto" is "cached" on CUDA, and on a CPU when the cache fits in memory (see
        :func:`~reid_tao.data.cached_pipeline.resolve_pipeline`). channels_last: "cached"
        pipeline batches on CUDA come in channels_last memory format. unlabeled: the training split is read
        with :func:`~reid_tao.data.layouts.read_unlabeled` and has no labels until
        :meth:`set_pseudo_labels` gives it some (domain adaptation); PK batches then draw from the
        clustered images only.

        source_dir: with ``unlabeled``, a labelled source split (read with ``read_split``) trained beside the
        target: every training batch is then a dict ``{TARGET: Batch, SOURCE: Batch}``, the source part a PK
        batch of source identities (same batch size, K and augmentation) drawn by a :class:`CyclingSampler`
        through as many source PK epochs as the target's epoch (whose length decides the epoch's) needs."""
        super().__init__()
        if source_dir and not unlabeled:
            raise ValueError("source_dir needs unlabeled=True (a source stream beside unlabeled target images)")
        self.source_dir = source_dir or None
        self.source_records: list[ImageRecord] = []
        self.source_labels: list[int] = []
        self.source_pipeline: TrainPipeline | None = None
        self.train_dir, self.query_dir, self.gallery_dir, self.layout = train_dir, query_dir, gallery_dir, layout
        self.preprocessing, self.augment, self.loader_settings = preprocessing, augment, loader
        resolve_pipeline(pipeline)  # reject unknown names now, resolve "auto" once the device is known
        self.pipeline, self.channels_last, self.unlabeled = pipeline, channels_last, unlabeled
        self.eval_transform = preprocessing.eval_transform()
        self.train_pipeline: TrainPipeline | None = None  # chosen by the first train_dataloader()
        self.train_records: list[ImageRecord] = []
        self.query_records: list[ImageRecord] = []
        self.gallery_records: list[ImageRecord] = []
        self.train_labels: list[int] = []
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained on)

    @property
    def num_classes(self) -> int:
        return len(set(self.train_labels))

    @property
    def num_source_classes(self) -> int:
        """Identities of the labelled source split (0 without one)."""
        return len(set(self.source_labels))

    @property
    def has_validation(self) -> bool:
        return bool(self.query_records and self.gallery_records)

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        if self.unlabeled:
            self.train_records = read_unlabeled(self.train_dir, "dataset.train_dataset_dir", self.layout)
            self.train_labels = [-1] * len(self.train_records)  # none until the first clustering
        else:
            self.train_records = read_split(self.train_dir, "dataset.train_dataset_dir", self.layout)
            self.train_labels, _ = relabel(self.train_records)
            if self.num_classes < 2:
                raise DataError(
                    f"dataset.train_dataset_dir: {self.train_dir} holds a single identity; "
                    "re-identification training needs at least 2 (Market-1501 has 751)"
                )
            self.check_identities_per_batch()
        subsets = {"train": self.train_records}
        if self.source_dir:
            self.source_records = read_split(self.source_dir, SOURCE_FIELD, self.layout)
            self.source_labels, _ = relabel(self.source_records)
            if self.num_source_classes < 2:
                raise DataError(
                    f"{SOURCE_FIELD}: {self.source_dir} holds {self.num_source_classes} identity; the "
                    "labelled source stream needs at least 2 (Market-1501's bounding_box_train has 751)"
                )
            self.check_source_identities()
            subsets["source"] = self.source_records
        if self.query_dir and self.gallery_dir:
            self.query_records = read_split(self.query_dir, "dataset.query_dataset_dir", self.layout)
            self.gallery_records = read_split(self.gallery_dir, "dataset.test_dataset_dir", self.layout)
            subsets.update(query=self.query_records, gallery=self.gallery_records)
        log.info("dataset summary\n%s", summary_table(subsets, unlabeled=("train",) if self.unlabeled else ()))

    def set_pseudo_labels(self, labels: Sequence[int]) -> None:
        """Labels of an unlabeled training split (cluster index per image, -1 = outlier, left out); the next
        training loader draws PK batches over them."""
        if len(labels) != len(self.train_records):
            raise ValueError(f"{len(labels)} labels for {len(self.train_records)} training images")
        self.train_labels = [int(label) for label in labels]
        self.check_identities_per_batch()

    @property
    def num_clusters(self) -> int:
        return len({label for label in self.train_labels if label >= 0})

    def check_identities_per_batch(self, world_size: int | None = None) -> None:
        """PK batches need P distinct identities (clusters, when unlabeled) per process (P x processes per step
        over all of them). ``world_size``: the number of training processes, when known before the Trainer
        runs setup (`reid train` checks with it before any process starts); else the attached Trainer's."""
        settings = self.loader_settings
        if not settings.pk_batches or not self.train_labels:
            return
        per_batch, world_size = self._pk_identities(world_size)
        found = self.num_clusters if self.unlabeled else self.num_classes
        if found >= per_batch * world_size:
            return
        if self.unlabeled:
            raise DataError(
                f"dataset.train_dataset_dir: the clustering found {found} pseudo identities, fewer than "
                f"the {per_batch * world_size} a PK batch needs; lower adaptation.eps when the "
                "clusters are few and large (merged people), raise it when most images are outliers, or "
                "lower dataset.batch_size"
            )
        needed = f"{per_batch} per PK batch (dataset.batch_size / dataset.num_instances)"
        fix = "lower dataset.batch_size"
        if world_size > 1:
            needed, fix = f"{needed} x {world_size} processes", f"{fix} or use fewer devices"
        raise DataError(f"dataset.train_dataset_dir: {self.num_classes} identities are fewer than the {needed}; {fix}")

    def check_source_identities(self, world_size: int | None = None) -> None:
        """The source stream's PK batches need P source identities per process."""
        if not self.source_labels:
            return
        per_batch, world_size = self._pk_identities(world_size)
        if self.num_source_classes < per_batch * world_size:
            raise DataError(
                f"{SOURCE_FIELD}: {self.num_source_classes} identities are fewer than the "
                f"{per_batch * world_size} a PK batch needs (dataset.batch_size / dataset.num_instances"
                f"{' x processes' if world_size > 1 else ''}); use a larger source or lower "
                "dataset.batch_size"
            )

    def _pk_identities(self, world_size: int | None) -> tuple[int, int]:
        """(identities per PK batch, training processes: ``world_size``, else the attached Trainer's)."""
        if world_size is None:
            _, world_size = self._rank_and_world()
        return self.loader_settings.batch_size // self.loader_settings.num_instances, world_size

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _make_train_pipeline(self, kind: str | None = None) -> TrainPipeline:
        """A training pipeline of ``kind`` ("workers" / "cached"; None: dataset.pipeline resolved for this device,
        with the source stream's images counted in the cache)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        # every process of this machine keeps its own cache (of the target's and the source's images)
        copies = self.trainer.num_devices if self.trainer is not None else 1
        chosen = kind
        if chosen is None:
            images = len(self.train_records) + len(self.source_records)
            cache_bytes = cache_bytes_for(images, self.preprocessing.input_size) * copies
            chosen = resolve_pipeline(self.pipeline, device, cache_bytes)
            if self.pipeline == "auto":
                log.info("dataset.pipeline=auto: %s", _pipeline_reason(chosen, device, cache_bytes))
        if chosen == "cached":
            on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
            # every process on this machine builds its own cache at the same time: share the CPUs
            return DevicePipeline(
                self.preprocessing,
                self.augment,
                self.channels_last,
                pin_memory=on_cuda,
                decode_threads=decode_threads(copies),
            )
        return WorkerPipeline(self.preprocessing, self.augment, self.loader_settings.num_workers)

    def start_epoch_at(self, epoch: int, batches: int) -> None:
        """Resuming mid-epoch: the training loader of epoch ``epoch`` skips its first ``batches`` batches."""
        self._resume_at = (int(epoch), int(batches))

    def train_dataloader(self):
        """The target's training loader; with a source stream a CombinedLoader of it and the source's (mode
        "min_size": both have the target's length, so an epoch is the target's)."""
        if self.train_pipeline is None:
            self.train_pipeline = self._make_train_pipeline()
            if self.source_records:  # the same kind, with its own image cache
                self.source_pipeline = self._make_train_pipeline(self.train_pipeline.name)
        settings, (rank, world_size) = self.loader_settings, self._rank_and_world()
        if not settings.pk_batches:
            # DistributedSampler only takes the length of its "dataset": one label per training image.
            base = DistributedSampler(
                self.train_labels, num_replicas=world_size, rank=rank, shuffle=True, seed=settings.seed, drop_last=True
            )
        elif self.unlabeled:
            clustered = [index for index, label in enumerate(self.train_labels) if label >= 0]
            cameras = [self.train_records[i].camid for i in clustered] if settings.camera_balanced else None
            base = SubsetSampler(
                PKSampler(
                    [self.train_labels[i] for i in clustered],
                    settings.batch_size,
                    settings.num_instances,
                    seed=settings.seed,
                    rank=rank,
                    world_size=world_size,
                    cameras=cameras,
                ),
                clustered,
            )
        else:
            base = PKSampler(
                self.train_labels,
                settings.batch_size,
                settings.num_instances,
                seed=settings.seed,
                rank=rank,
                world_size=world_size,
            )
        sampler = SeededSampler(base, settings.seed, rank)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.start_at(epoch, batches * settings.batch_size)
        # Lightning creates the first iterator (and loader workers start drawing indices) before it sets the
        # sampler's epoch, so set it now. On resume trainer.current_epoch still reads the last finished
        # epoch here; the epoch about to run is the one Lightning itself gives samplers: epochs processed.
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        sampler.set_epoch(epoch)
        target = self.train_pipeline.loader(self.train_records, self.train_labels, sampler, settings.batch_size)
        if not self.source_records:
            return target
        # its own sampling and augmentation seeds: the target's would crop and erase both batches alike
        source_seed = derive_seed(settings.seed, SOURCE_STREAM)
        source_base = CyclingSampler(
            PKSampler(
                self.source_labels,
                settings.batch_size,
                settings.num_instances,
                seed=source_seed,
                rank=rank,
                world_size=world_size,
            ),
            len(base),
        )
        source_sampler = SeededSampler(source_base, source_seed, rank)
        if self._resume_at is not None:  # skips as many batches as the target's
            epoch_at, batches = self._resume_at
            source_sampler.start_at(epoch_at, batches * settings.batch_size)
        source_sampler.set_epoch(epoch)
        source = self.source_pipeline.loader(
            self.source_records, self.source_labels, source_sampler, settings.batch_size
        )
        return CombinedLoader({TARGET: target, SOURCE: source}, mode="min_size")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches go through the training pipeline (the "cached" one makes the images here)."""
        trainer = self.trainer
        if self.train_pipeline is None or trainer is None or not trainer.training:
            return batch
        if isinstance(batch, dict):  # with a source stream: each part through its own pipeline (image cache)
            return {
                TARGET: self.train_pipeline.on_after_batch_transfer(batch[TARGET], trainer.global_rank),
                SOURCE: self.source_pipeline.on_after_batch_transfer(batch[SOURCE], trainer.global_rank),
            }
        return self.train_pipeline.on_after_batch_transfer(batch, trainer.global_rank)

    def val_dataloader(self) -> DataLoader:
        """Each process extracts a contiguous shard; the module gathers the features in dataset order."""
        records = self.query_records + self.gallery_records
        rank, world_size = self._rank_and_world()
        return eval_loader(
            eval_dataset(records, self.eval_transform),
            self.loader_settings.val_batch_size,
            self.loader_settings.num_workers,
            sampler=ShardSampler(len(records), rank, world_size),
        )
