"""Feature extraction for evaluate/inference through Lightning's predict loop: one process or sharded
over several (DDP), with the features gathered back in dataset order."""

from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

from reid_tao.data.datamodule import eval_loader
from reid_tao.data.datasets import ImageDataset, ShardSampler
from reid_tao.engine.callbacks import console_is_terminal
from reid_tao.engine.devices import plan_devices
from reid_tao.engine.distributed import gather_by_index
from reid_tao.engine.precision import precision_for
from reid_tao.evaluation.features import embed


class FeatureExtractor(pl.LightningModule):
    def __init__(self, model: nn.Module, dataset: ImageDataset, batch_size: int, num_workers: int, flip: bool = False):
        super().__init__()
        self.model, self.dataset, self.flip = model, dataset, flip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.features: torch.Tensor | None = None
        self.shard: ShardSampler | None = None

    def predict_dataloader(self):
        # Never empty while the dataset has an image: every rank runs the loop and reaches the gather.
        self.shard = ShardSampler(len(self.dataset), self.trainer.global_rank, self.trainer.world_size)
        return eval_loader(self.dataset, self.batch_size, self.num_workers, sampler=self.shard)

    def on_predict_epoch_start(self) -> None:
        self._rows, self._indices = [], []

    def predict_step(self, batch, batch_idx: int) -> None:
        self._rows.append(embed(self.model, batch.images, self.flip))
        # index -1: an item this rank only borrowed, which gather_by_index drops
        self._indices.append(torch.where(self.shard.owns(batch.indices), batch.indices, -1))

    def on_predict_epoch_end(self) -> None:
        # Every rank has at least one batch (see predict_dataloader), so every rank gathers.
        rows, indices = torch.cat(self._rows), torch.cat(self._indices)
        self.features = gather_by_index(self.all_gather, rows, indices, len(self.dataset), self.trainer.world_size)


def _plan(section: DictConfig):
    return plan_devices(
        section.accelerator, section.num_gpus, section.gpu_ids, section.num_nodes, section=section._key()
    )


def _first_gpu(plan) -> int | None:
    return plan.devices[0] if plan.accelerator == "gpu" else None


def section_precision(section: DictConfig) -> str:
    """The precision evaluate/inference extract with: <section>.precision resolved on the section's device
    (default "32", so metrics and embeddings match the CPU and TAO's fp32 evaluation)."""
    plan = _plan(section)
    return precision_for(section.precision, plan.accelerator, _first_gpu(plan))


@contextmanager
def _float32_matmul_precision(value: str):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def extract(
    model: nn.Module, dataset: ImageDataset, section: DictConfig, batch_size: int, num_workers: int, flip: bool = False
) -> torch.Tensor | None:
    """(N, D) float32 features in dataset order, on the device that extracted them, on the global-zero
    process (so metrics and re-ranking run on the GPU when there is one); None on the other processes."""
    plan = _plan(section)
    precision = precision_for(section.precision, plan.accelerator, _first_gpu(plan))
    trainer = pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=plan.strategy,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=console_is_terminal(),
    )
    extractor = FeatureExtractor(model, dataset, batch_size, num_workers, flip)
    # fp32 features may use TF32 matrix products on the GPU ("high"): ~1e-3 relative, far below ranking gaps.
    with _float32_matmul_precision("high"):
        trainer.predict(extractor, return_predictions=False)
    return extractor.features if trainer.is_global_zero else None
