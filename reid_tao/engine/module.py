"""LightningModule: the training step (ID + triplet + center loss), per-epoch lr, and validation."""

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from reid_tao.data.datamodule import SOURCE, TARGET
from reid_tao.data.seeding import derive_seed
from reid_tao.engine.metric_names import SOURCE_LOSS, train_name, validation_values
from reid_tao.engine.optim import build_center_optimizer, build_optimizer, build_scheduler
from reid_tao.engine.precision import autocast_for
from reid_tao.evaluation.features import embed

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The global-RNG seed of one epoch on one process: reproducible, different per epoch and per rank
    (32 bits: what ``seed_everything`` takes)."""
    return derive_seed(seed, epoch, rank, bits=32)


class ReidModule(pl.LightningModule):
    """Manual optimisation, because the center-loss centers have their own SGD optimiser that must step
    (TAO builds it and never steps it, bug B2)."""

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        center_lr: float = 0.5,
        grad_clip: float = 0.0,
        seed: int = -1,
        flip_feature: bool = False,
        max_rank: int = 10,
        num_query: int = 0,
        metadata: dict[str, Any] = None,
        compile_model: bool = False,
        channels_last: bool = False,
        re_ranking: dict[str, float] | None = None,
        val_precision: str = "32",
        source_loss: nn.Module | None = None,
        source_loss_weight: float = 1.0,
    ):
        """source_loss: the loss of a labelled source batch trained in the same steps (domain adaptation with a
        source stream: training batches are then dicts of a TARGET and a SOURCE batch, forwarded separately so
        batch norm sees each domain's own batch statistics); the total is
        ``loss(target) + source_loss_weight * source_loss(source)``."""
        super().__init__()
        if source_loss_weight < 0:
            raise ValueError(f"source_loss_weight must be >= 0, got {source_loss_weight}")
        self.automatic_optimization = False
        self.model, self.loss = model, loss
        self.source_loss, self.source_loss_weight = source_loss, float(source_loss_weight)
        self.optimizer_args, self.scheduler_args = optimizer, scheduler
        self.center_lr, self.grad_clip = center_lr, grad_clip
        self.seed, self.flip_feature, self.max_rank, self.num_query = seed, flip_feature, max_rank, num_query
        self.metadata = metadata or {}
        self.compile_model, self.channels_last = compile_model, channels_last
        self.val_precision = val_precision  # evaluate.precision: validation computes as `reid evaluate` does
        if not (loss.needs_logits or (source_loss is not None and source_loss.needs_logits)):
            model.freeze_id_head()  # no ID loss: parameters without gradients would break DDP
        # Not registered as a submodule, so checkpoints keep the plain `model.` keys.
        self.__dict__["_train_forward"] = self.model
        self._configured_for: torch.device | None = None
        # Step losses summed on the device; the progress bar reads (and resets) them when it refreshes.
        self._running_loss: torch.Tensor | None = None
        self._running_steps = 0
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._last_val_epoch = 0
        # k1, k2, lambda_value: validation reports the re-ranked metrics (as TAO and evaluate do), else plain
        self.re_ranking = re_ranking
        self.val_ranking = "re-ranked" if re_ranking else "plain"

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, **self.optimizer_args)
        scheduler = build_scheduler(optimizer, **self.scheduler_args)
        optimizers = [optimizer]
        centers = list(self.loss.own_parameters())
        if centers:
            optimizers.append(build_center_optimizer(centers, self.center_lr))
        return optimizers, [{"scheduler": scheduler, "interval": "epoch"}]

    def configure_model(self) -> None:
        """Memory format and compilation, before the strategy moves and wraps the model: DDP then builds
        its gradient buckets in channels_last layout (no strided copy per conv gradient per step) and
        calls the compiled forward from inside its own forward (dynamo splits the graph at its buckets)."""
        device = self.trainer.strategy.root_device
        if self._configured_for == device:
            return  # configure_model runs again for every fit/validate call
        self._configured_for = device
        if self.channels_last and device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        if self.compile_model:
            self.__dict__["_train_forward"] = torch.compile(self.model)

    def on_train_epoch_start(self) -> None:
        # Stochastic layers (dropout, drop path) draw from the global RNG: reseed per epoch so a resumed run
        # matches, and per rank so the processes do not all draw the same masks.
        if self.seed >= 0:
            pl.seed_everything(epoch_seed(self.seed, self.current_epoch, self.global_rank), verbose=False)

    def _forward(self, images: torch.Tensor):
        if self.channels_last and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._train_forward(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        source = None
        if isinstance(batch, dict):  # a target and a labelled source batch (see __init__)
            batch, source = batch[TARGET], batch[SOURCE]
        labels = batch.pids
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        logits, features = self._forward(batch.images)
        losses = self.loss(logits, features, labels, batch.camids)
        if source is not None:
            # a second forward: the source's batch-norm statistics stay apart from the target's
            source_logits, source_features = self._forward(source.images)
            source_losses = self.source_loss(source_logits, source_features, source.pids, source.camids)
            losses = {
                **losses,
                "loss": losses["loss"] + self.source_loss_weight * source_losses["loss"],
                SOURCE_LOSS: source_losses["loss"].detach(),
            }
            # the ID accuracy is the classifier's, over the source identities (the target's are pseudo labels)
            logits, labels = source_logits, source.pids
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(losses["loss"])
        center_scale = self._center_grad_scale() if len(optimizers) > 1 else None
        optimizers[0].step()  # gradient clipping: on_before_optimizer_step, after a fp16 scaler unscaled
        if center_scale is not None:
            self._step_centers(optimizers[1].optimizer, center_scale)
        # TAO's scalar names: train_loss, train_acc_1 (and train_id_loss, train_triplet_loss, ...)
        metrics = {train_name(name): value.detach() for name, value in losses.items()}
        if logits is not None:
            metrics[train_name("acc_1")] = (logits.detach().argmax(dim=1) == labels).float().mean()
        # Epoch means accumulate on the device; nothing here reads a value back to the host (a per-step
        # prog_bar metric would: Lightning turns those into Python numbers after every step).
        # TAO's TensorBoard tags: train_loss_step (this process's step value, read by the loggers every
        # log_every_n_steps, never synced) and train_loss_epoch; callbacks (status.json, a train_loss-monitored
        # best-k) read train_loss. The epoch values use sync_dist with on_step=False: reduced over the processes
        # once, when the epoch mean is computed, so every rank sees the whole global batch, not rank 0's share.
        loss_value = metrics.pop("train_loss")
        self.log("train_loss_step", loss_value, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        self.log(
            "train_loss_epoch", loss_value, on_step=False, on_epoch=True, batch_size=labels.shape[0], sync_dist=True
        )
        self.log(
            "train_loss",
            loss_value,
            on_step=False,
            on_epoch=True,
            batch_size=labels.shape[0],
            sync_dist=True,
            logger=False,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=False, batch_size=labels.shape[0], sync_dist=True)
        loss = losses["loss"].detach()
        self._running_loss = loss if self._running_loss is None else self._running_loss + loss
        self._running_steps += 1
        return losses["loss"]

    def take_running_loss(self) -> float | None:
        """Mean step loss since the last call (one device-to-host read), or None when no step ran."""
        if self._running_loss is None:
            return None
        value = self._running_loss.item() / self._running_steps
        self._running_loss, self._running_steps = None, 0
        return value

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Lightning calls this after a fp16 GradScaler unscaled the gradients (and only for the main
        optimiser: the centers step outside Lightning), so the clip threshold applies to true gradients."""
        if self.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def _center_grad_scale(self) -> float:
        """The loss already gives the centers the unweighted center-loss gradient (as BoT's rescaling
        does); only a fp16 loss scale has to be undone, since the centers step outside the scaler."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return 1.0 / scaler.get_scale() if scaler is not None else 1.0

    def _step_centers(self, optimizer: torch.optim.Optimizer, scale: float) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        if scale != 1.0:
            torch._foreach_mul_(grads, scale)
            if not all(torch.isfinite(g).all() for g in grads):
                return  # fp16 overflow step: the scaler skips the main step too
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        # the lr this epoch trained with, before the schedule moves on
        optimizers = self.optimizers()
        main = optimizers[0] if isinstance(optimizers, list) else optimizers
        self.log("base_lr", main.optimizer.param_groups[0]["lr"], on_step=False, on_epoch=True)
        scheduler = self.lr_schedulers()
        scheduler.step()

    # -- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        from reid_tao.engine.distributed import broadcast_buffers

        broadcast_buffers(self.model)  # every rank embeds its shard with rank 0's (the checkpoint's) statistics

    def validation_step(self, batch, batch_idx: int) -> None:
        with autocast_for(self.val_precision, self.device):  # replaces the training autocast in this block
            features = embed(self.model, batch.images, self.flip_feature)
        ids = torch.stack([batch.pids, batch.camids], dim=1).to(features.dtype)
        self._val_outputs.append((torch.cat([features, ids], dim=1), batch.indices))

    def on_validation_epoch_end(self) -> None:
        """Gather the features, rank this process's share of the queries against the whole gallery and
        add the per-query sums over the processes: no process builds the full (Q, G) distance matrix, and
        every process logs the same reduced values (checkpoint and early-stopping callbacks see them)."""
        from reid_tao.data.datasets import ShardSampler, shard_range
        from reid_tao.engine.distributed import gather_by_index
        from reid_tao.evaluation.metrics import RankSums
        from reid_tao.evaluation.query_share import query_share_sums

        if self.num_query == 0:
            return
        rank, world_size = self.global_rank, self.trainer.world_size
        total = len(self.trainer.datamodule.query_records) + len(self.trainer.datamodule.gallery_records)
        # The val loader's ShardSampler gives an empty shard one borrowed image (so this hook runs on every
        # rank and reaches the collectives); index -1 tells gather_by_index to drop it.
        rows = torch.cat([r for r, _ in self._val_outputs])
        indices = torch.cat([i for _, i in self._val_outputs])
        indices = torch.where(ShardSampler(total, rank, world_size).owns(indices), indices, -1)
        self._val_outputs.clear()
        outputs = gather_by_index(self.all_gather, rows, indices, total, world_size)
        features, pids, camids = outputs[:, :-2], outputs[:, -2].long(), outputs[:, -1].long()
        q = self.num_query
        begin, end = shard_range(q, rank, world_size)  # this process's queries (maybe none)
        if self.re_ranking:
            # k-reciprocal sets need every probe's neighbours: each process re-ranks all (the same result)
            # and ranks its share of the queries.
            from reid_tao.evaluation.metrics import rank_sums
            from reid_tao.evaluation.rerank import re_ranking

            normed = torch.nn.functional.normalize(features.float(), dim=1)
            final = re_ranking(normed[:q], normed[q:], **self.re_ranking)
            local = rank_sums(
                final[begin:end],
                pids[begin:end],
                pids[q:],
                camids[begin:end],
                camids[q:],
                max_rank=max(self.max_rank, 10),
            )
        else:
            local = query_share_sums(
                features[begin:end],
                features[q:],
                pids[begin:end],
                pids[q:],
                camids[begin:end],
                camids[q:],
                max_rank=max(self.max_rank, 10),
            )
        summed = self.trainer.strategy.reduce(local.to_vector(self.device), reduce_op="sum")
        result = RankSums.from_vector(summed, local.num_gallery).metrics()
        self.log_dict(validation_values(result))
        self._last_val_epoch = self.current_epoch + 1

    # -- checkpoint ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["reid_tao"] = self.metadata
