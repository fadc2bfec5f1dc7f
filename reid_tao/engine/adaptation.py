"""Domain adaptation by pseudo labels: re-cluster the unlabeled training images during training.

:class:`PseudoLabelCallback` embeds the training split with the current model, clusters it
(:func:`~reid_tao.evaluation.clustering.cluster_features`), gives the clusters to the data module as labels
(outliers left out) and their centroids to the cluster memory. It runs before the first epoch (once the model,
or the checkpoint of a resumed run, is loaded) and then after every ``interval``-th epoch; the trainer must
reload the training loader every epoch (``reload_dataloaders_every_n_epochs=1``) so the next epoch draws PK
batches over the new clusters. Per epoch it logs ``clusters``, ``outliers`` and ``images_used``.

With several processes, global rank 0 embeds and clusters, and the labels and centroids are broadcast: all
processes must draw their PK batches from the same plan. Batch-norm statistics (adaptation.target_batch_norm,
and in :class:`FinalWeights`) are measured by every process over all training images, so the replicas stay
equal.

:class:`MeanTeacher` keeps a moving average of the weights that embeds for the clustering. :class:`FinalWeights`
ends the run with the teacher's weights and, optionally, a weighted average of the adapted and the source weights
(WiSE-FT, Wortsman et al. 2022): the pseudo labels are noisy, and when the target domain is close to the
source's, training on them alone can lose what the labelled source training taught. The batch-norm statistics
of the final weights are then measured on the training images (as SWA does after averaging): averaging the
two models' statistics instead describes neither, and cost most of the gain on a shifted domain.
"""

import logging
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from reid_tao.data.datamodule import eval_dataset, eval_loader
from reid_tao.data.tracklets import track_groups
from reid_tao.engine.preemption import PreemptionCheckpoint
from reid_tao.errors import DataError, Preempted
from reid_tao.evaluation.clustering import cluster_features
from reid_tao.model.losses import PseudoLabelTerm

log = logging.getLogger("reid_tao.train")


def training_images(trainer: pl.Trainer, batch_size: int, num_workers: int):
    """An ordered loader of the training images with the evaluation transform (no augmentation)."""
    datamodule = trainer.datamodule
    return eval_loader(eval_dataset(datamodule.train_records, datamodule.eval_transform), batch_size, num_workers)


@torch.no_grad()
def measure_batch_norm(model: torch.nn.Module, images: Iterable[torch.Tensor]) -> None:
    """Replace the running statistics of every batch-norm layer by those of ``images`` (an iterable of batches):
    the plain average of the per-batch statistics, not a momentum average (torch.optim.swa_utils.update_bn).
    A batch of one image is skipped (batch norm in training mode needs two values per channel); a set with no
    larger batch raises DataError."""
    measured = []

    def larger_than_one(batches):
        for batch in batches:
            if batch.shape[0] > 1:
                measured.append(batch.shape[0])
                yield batch

    update_bn(larger_than_one(images), model)
    if not measured:
        raise DataError(
            "dataset.train_dataset_dir: batch-norm statistics need at least 2 training images "
            "(adaptation.target_batch_norm / adaptation.source_weight); add images"
        )


def measure_batch_norm_on_training_images(
    trainer: pl.Trainer, module: pl.LightningModule, batch_size: int, num_workers: int
) -> None:
    images = (batch.images.to(module.device) for batch in training_images(trainer, batch_size, num_workers))
    with trainer.precision_plugin.forward_context():
        measure_batch_norm(module.model, images)


class PseudoLabelCallback(pl.Callback):
    """Re-cluster the training images and rebuild the pseudo-label loss terms (cluster memory, camera proxies).

    eps: the DBSCAN radius, or None: chosen at the first clustering from its distances
    (:func:`~reid_tao.evaluation.clustering.auto_eps` with ``eps_share``) and kept for the run.
    outliers: "drop" leaves un-clustered images out of training; "instances" gives each its own memory entry, a
    negative for every batch feature (as SpCL's hybrid memory); batches are drawn from the clusters either way.
    camera_centring: cluster :func:`~reid_tao.evaluation.clustering.camera_centred` features.
    same_camera_penalty: added to the squared distance of two images from one camera in the clustering's
    k-reciprocal neighbours (:func:`~reid_tao.evaluation.clustering.distance_graph`).
    target_batch_norm: before the first clustering of a new run (not a resumed one), measure the batch-norm
    statistics on the training images (AdaBN, Li et al. 2016): the source's describe the source cameras, and
    the first pseudo labels come from this model.
    teacher: a :class:`MeanTeacher` whose weights embed the images once it has started.
    tracklets: when every training image's name carries its track (:func:`~reid_tao.data.tracklets.track_groups`),
    cluster one mean feature per track and give all of a track's images its cluster.
    A re-clustering that finds too few clusters for a PK batch keeps the previous pseudo labels (one line says
    so) instead of ending the run; the first clustering has none to keep and raises."""

    def __init__(
        self,
        terms: Sequence[PseudoLabelTerm],
        interval: int = 1,
        eps: float | None = None,
        eps_share: float = 0.0016,
        min_samples: int = 2,
        k1: int = 10,
        k2: int = 6,
        outliers: str = "drop",
        batch_size: int = 128,
        num_workers: int = 0,
        camera_centring: bool = True,
        same_camera_penalty: float = 0.0,
        target_batch_norm: bool = True,
        teacher: Optional["MeanTeacher"] = None,
        tracklets: bool = False,
    ):
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if outliers not in OUTLIER_POLICIES:
            raise ValueError(f"outliers must be one of {OUTLIER_POLICIES}, got {outliers!r}")
        self.terms, self.interval = list(terms), interval
        self.eps, self.eps_share = eps, eps_share
        self.cluster_args = dict(
            min_samples=min_samples, k1=k1, k2=k2, centring=camera_centring, camera_penalty=same_camera_penalty
        )
        self.outliers = outliers
        self.batch_size, self.num_workers = batch_size, num_workers
        self.target_batch_norm = target_batch_norm
        self.teacher, self.tracklets = teacher, tracklets
        self.stats: dict[str, float] = {}
        self.clusterings = 0

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.target_batch_norm and trainer.ckpt_path is None:
            started = time.perf_counter()
            measure_batch_norm_on_training_images(trainer, module, self.batch_size, self.num_workers)
            log.info(
                "batch-norm statistics measured on the training images (%.1f s, adaptation.target_batch_norm)",
                time.perf_counter() - started,
            )
        self.recluster(trainer, module)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        module.log_dict(self.stats, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if reclusters_before(trainer.current_epoch + 1, self.interval, trainer.max_epochs) and not trainer.should_stop:
            self.recluster(trainer, module)

    def _cluster(self, trainer: pl.Trainer, module: pl.LightningModule, cameras: torch.Tensor) -> tuple | None:
        """Embed, cluster and rebuild the terms (global rank 0); None when a stop signal came in between."""
        features = self.embed_training_images(trainer, module)
        if features is None or stop_signal(trainer):
            return None
        groups = track_groups(trainer.datamodule.train_records) if self.tracklets else None
        if groups is None:
            clustering = cluster_features(
                features, eps=self.eps, eps_share=self.eps_share, cameras=cameras, **self.cluster_args
            )
            found = clustering.labels
        else:
            found, clustering = cluster_tracks(
                features, groups, cameras, eps=self.eps, eps_share=self.eps_share, **self.cluster_args
            )
        if stop_signal(trainer):
            return None
        labels = with_outliers(found, self.outliers)  # the memory's rows; batches are drawn from `found`
        for term in self.terms:
            term.reset_pseudo_labels(features, torch.as_tensor(labels), cameras)
        return found, clustering.eps, [term_state(term) for term in self.terms]

    @torch.no_grad()
    def embed_training_images(self, trainer: pl.Trainer, module: pl.LightningModule) -> torch.Tensor | None:
        """(N, D) float32 BNNeck outputs of the training images (what the memory loss sees in training),
        computed in fp32 whatever the training precision: the clustering compares close distances."""
        loader = training_images(trainer, self.batch_size, self.num_workers)
        teacher = self.teacher.model if self.teacher is not None else None
        model = teacher if teacher is not None else module.model
        was_training = model.training
        model.eval()
        features = []
        try:
            with torch.autocast(module.device.type, enabled=False):
                for batch in loader:
                    if stop_signal(trainer):
                        return None
                    features.append(model.neck_feature(batch.images.to(module.device)).float())
        finally:
            model.train(was_training)
        return torch.cat(features)

    def recluster(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        started = time.perf_counter()
        result: tuple | None = None
        cameras = torch.tensor([record.camid for record in trainer.datamodule.train_records])
        if trainer.is_global_zero:
            result = self._cluster(trainer, module, cameras)
        result = trainer.strategy.broadcast(result, src=0)
        if result is None:  # a stop signal came: the next epoch's start stops with the last checkpoint
            signum = stop_signal(trainer)
            if self.clusterings == 0:
                raise Preempted(
                    f"stopped by {signal.Signals(signum).name} during the first clustering, before any "
                    "training step of this run; run the same command to start again",
                    signum,
                )
            log.info("clustering stopped by %s; stopping at the last checkpoint", signal.Signals(signum).name)
            return
        found, eps, states = result
        found = np.asarray(found)
        used, clusters = int((found >= 0).sum()), int(found.max(initial=-1)) + 1
        if self.eps is None:
            log.info(
                "adaptation.eps=auto: %.3f (the mean of the smallest %.2g of the Jaccard distances)",
                eps,
                self.eps_share,
            )
            self.eps = eps
        log.info(
            "pseudo labels: %d clusters, %d outliers%s, %d of %d images trained on (%.1f s)",
            clusters,
            len(found) - used,
            " (memory negatives)" if self.outliers == "instances" else "",
            used,
            len(found),
            time.perf_counter() - started,
        )
        try:
            # an outlier is one image: drawn K times per epoch as a PK identity it would outnumber the clusters,
            # so only the clusters make batches (`found`: with_outliers numbers the clusters alike) and outlier
            # instances are negatives in the memory (SpCL)
            trainer.datamodule.set_pseudo_labels(found.tolist())
        except DataError as error:
            if self.clusterings == 0:
                raise
            log.warning("this clustering is not used, the previous pseudo labels are kept: %s", error)
            return
        for term, state in zip(self.terms, states):
            load_term_state(term, state, module.device)
        self.stats = {"clusters": float(clusters), "outliers": float(len(found) - used), "images_used": float(used)}
        self.clusterings += 1


OUTLIER_POLICIES = ("drop", "instances")


def stop_signal(trainer: pl.Trainer) -> int:
    """The stop signal this process received during training (0: none), as PreemptionCheckpoint keeps it."""
    return next(
        (
            callback.received
            for callback in trainer.callbacks
            if isinstance(callback, PreemptionCheckpoint) and callback.received
        ),
        0,
    )


def reclusters_before(epoch: int, interval: int, max_epochs: int) -> bool:
    """Whether the pseudo labels are renewed before ``epoch`` (0-based) starts: every ``interval``-th epoch,
    epoch 0's clustering being the one at the start of the run."""
    return 0 < epoch < max_epochs and epoch % interval == 0


def group_means(features: torch.Tensor, groups: np.ndarray) -> torch.Tensor:
    """(G, D) sum of the L2-normalised features of each group 0..G-1: a track's feature (its direction is the
    mean's; the clustering normalises)."""
    index = torch.as_tensor(groups, device=features.device)
    sums = torch.zeros(int(index.max()) + 1, features.shape[1], device=features.device)
    return sums.index_add_(0, index, torch.nn.functional.normalize(features.float(), dim=1))


def cluster_tracks(features: torch.Tensor, groups: np.ndarray, cameras: torch.Tensor | None, **cluster_args):
    """(cluster per image, the tracks' Clustering): one point per track, so a track is never split and a long
    one does not crowd the neighbourhoods of the others; ``cluster_args`` go to ``cluster_features``."""
    first = np.unique(groups, return_index=True)[1]
    clustering = cluster_features(
        group_means(features, groups), cameras=cameras[first] if cameras is not None else None, **cluster_args
    )
    return tracks_as_clusters(clustering.labels, np.bincount(groups))[groups], clustering


def tracks_as_clusters(track_labels: np.ndarray, track_sizes: np.ndarray) -> np.ndarray:
    """Cluster index per track, where a track no cluster took but with 2 or more images is a pseudo identity of
    its own (the tracker already joined its images); single images stay outliers (-1)."""
    labels = np.asarray(track_labels).copy()
    alone = (labels < 0) & (track_sizes >= 2)
    labels[alone] = labels.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return labels


def with_outliers(labels: np.ndarray, policy: str) -> np.ndarray:
    """The pseudo labels to train with: "drop" keeps -1 for the outliers; "instances" numbers each outlier as a
    pseudo identity of its own after the clusters."""
    labels = np.asarray(labels).copy()
    if policy == "instances":
        outliers = labels < 0
        labels[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return labels


def term_state(term: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.cpu() for name, tensor in term.named_buffers()}


def load_term_state(term: torch.nn.Module, state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    for name, tensor in state.items():
        setattr(term, name, tensor.to(device))


class MeanTeacher(pl.Callback):
    """An exponential moving average of the model's weights and batch-norm statistics (the mean teacher of MMT,
    Ge et al. 2020): ``teacher <- momentum * teacher + (1 - momentum) * model`` after every step. The pseudo labels
    are noisy and change with every clustering; the average moves smoothly, so it embeds for the clustering and
    becomes the final weights (:class:`FinalWeights`). It starts at the first training step (after the
    adaptation's batch-norm measurement) and is saved in the checkpoint's callback state for resuming."""

    def __init__(self, momentum: float = 0.99):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must lie in (0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.average: AveragedModel | None = None
        self._restored: dict[str, torch.Tensor] | None = None

    @property
    def model(self) -> torch.nn.Module | None:
        """The teacher, or None before the first step."""
        return self.average.module if self.average is not None else None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.average = AveragedModel(module.model, multi_avg_fn=get_ema_multi_avg_fn(self.momentum), use_buffers=True)
        if self._restored is not None:
            self.average.load_state_dict(self._restored)
            self._restored = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.average.update_parameters(module.model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.average.state_dict()) if self.average is not None else {}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self._restored = dict(state_dict) or None


class FinalWeights(pl.Callback):
    """After the run's last optimiser step, set the final weights of ``module.model``:

    1. with a ``teacher`` (:class:`MeanTeacher`), its averaged weights;
    2. with ``source_weight`` > 0, ``source_weight * source + (1 - source_weight) * adapted`` for every
       floating-point tensor (WiSE-FT);
    3. with ``measure_statistics``, batch-norm statistics measured on the training images (evaluation transform;
       ``torch.optim.swa_utils.update_bn``): the weights are then judged on the target images' statistics,
       not on running averages taken while they changed.

    It runs in the last batch's ``on_train_batch_end`` (after the teacher's update, so list it after the
    teacher), so the final validation and the final checkpoint see the result; a run that stops earlier (a pruned
    trial, a preemption) is left as trained. Tensors missing from ``source_state`` or shaped differently (the
    unused classifier) are left as they are. Every process computes the same statistics from all images, so DDP
    replicas stay equal."""

    def __init__(
        self,
        source_state: Mapping[str, torch.Tensor] | None = None,
        source_weight: float = 0.0,
        teacher: MeanTeacher | None = None,
        measure_statistics: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
    ):
        if not 0.0 <= source_weight <= 1.0:
            raise ValueError(f"source_weight must lie in [0, 1], got {source_weight}")
        if source_weight > 0 and source_state is None:
            raise ValueError("source_weight > 0 needs source_state")
        self.source_state = {name: tensor.detach().cpu().clone() for name, tensor in (source_state or {}).items()}
        self.source_weight, self.teacher = float(source_weight), teacher
        self.measure_statistics = measure_statistics
        self.batch_size, self.num_workers = batch_size, num_workers
        self.applied = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        last_epoch = trainer.current_epoch + 1 >= trainer.max_epochs
        if not (last_epoch and batch_idx + 1 >= trainer.num_training_batches) or self.applied:
            return
        started, done = time.perf_counter(), []
        if self.teacher is not None and self.teacher.model is not None:
            module.model.load_state_dict(self.teacher.model.state_dict())
            done.append(f"the mean teacher's weights (adaptation.teacher_momentum {self.teacher.momentum})")
        if self.source_weight > 0:
            blended = self.interpolate(module.model)
            done.append(
                f"{self.source_weight:.2f} x source + {1 - self.source_weight:.2f} x adapted ({blended} "
                "tensors, adaptation.source_weight)"
            )
        if self.measure_statistics:
            measure_batch_norm_on_training_images(trainer, module, self.batch_size, self.num_workers)
            done.append("batch-norm statistics measured on the training images")
        self.applied = True
        if done:
            log.info("final weights: %s (%.1f s)", "; ".join(done), time.perf_counter() - started)

    @torch.no_grad()
    def interpolate(self, model: torch.nn.Module) -> int:
        """Blend the floating-point tensors in place with the source's; returns how many were blended."""
        blended = 0
        for name, tensor in model.state_dict().items():
            source = self.source_state.get(name)
            if source is None or source.shape != tensor.shape or not tensor.is_floating_point():
                continue
            tensor.lerp_(source.to(device=tensor.device, dtype=tensor.dtype), self.source_weight)
            blended += 1
        return blended
