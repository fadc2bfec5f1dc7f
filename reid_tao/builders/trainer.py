"""The Lightning Trainer of `reid train` from train.* (devices, precision, cuDNN flags, callbacks, loggers)."""

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from reid_tao.builders.training import checkpoint_settings, wandb_settings
from reid_tao.engine.callbacks import EpochSummary, StepLossBar, console_is_terminal
from reid_tao.engine.checkpoint import BackgroundCheckpointIO, checkpoint_callbacks
from reid_tao.engine.devices import plan_devices
from reid_tao.engine.loggers import experiment_loggers
from reid_tao.engine.precision import cpu_has_native_bf16, precision_for
from reid_tao.engine.status import StatusCallback, StatusFile

log = logging.getLogger(__name__)
RESUME_FIELD = "train.resume_training_checkpoint_path"


def build_trainer(
    config: DictConfig, results: Path, has_validation: bool, status: StatusFile | None = None, extra_callbacks=()
) -> pl.Trainer:
    """The Trainer for train.*; with ``status``, epoch lines go to status.json."""
    train = config.train
    plan = plan_devices(train.accelerator, train.num_gpus, train.gpu_ids, train.num_nodes)
    precision = precision_for(train.precision, plan.accelerator, plan.devices[0] if plan.accelerator == "gpu" else None)
    log.info(
        "devices: %s x %s on %d node(s), precision %s; global batch %d (dataset.batch_size is per process), "
        "base lr %g (not scaled with the number of processes)",
        plan.num_processes,
        plan.accelerator,
        plan.num_nodes,
        precision,
        config.dataset.batch_size * plan.num_processes * plan.num_nodes,
        train.optim.base_lr,
    )
    if precision == "bf16-mixed" and plan.accelerator == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "train.precision=bf16-mixed: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
            "emulated and trains slower than train.precision=32"
        )
    multi_process = plan.num_processes * plan.num_nodes > 1
    sync_bn = train.sync_bn and multi_process and plan.accelerator == "gpu"
    if train.sync_bn and multi_process and not sync_bn:
        log.info("train.sync_bn: SyncBatchNorm needs GPUs; CPU processes keep per-process BatchNorm statistics")
    if sync_bn and train.compile:
        log.warning(
            "train.sync_bn with train.compile: SyncBatchNorm syncs with the host in every BatchNorm "
            "layer and breaks the compiled graph there; set train.sync_bn=false unless the per-GPU "
            "batch is very small"
        )
    benchmark, deterministic = cudnn_flags(train.cudnn, plan.accelerator)
    bar = console_is_terminal()  # else the EpochSummary line per epoch only
    return pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=plan.strategy,
        sync_batchnorm=sync_bn,
        precision=precision,
        max_epochs=train.num_epochs,
        default_root_dir=str(results),
        callbacks=[
            *checkpoint_callbacks(results, **checkpoint_settings(config)),
            EpochSummary(),
            *([StatusCallback(status)] if status is not None else []),
            # the bar reads the step loss back from the device when it redraws: every 10 steps on a GPU
            *([StepLossBar(refresh_rate=10 if plan.accelerator == "gpu" else 1, leave=False)] if bar else []),
            *extra_callbacks,
        ],
        # checkpoints are written in a background thread from a host snapshot (training does not wait)
        plugins=[BackgroundCheckpointIO(RESUME_FIELD, trust=config.model.trust_weights_file)],
        logger=experiment_loggers(results, wandb_settings(config)),
        check_val_every_n_epoch=train.validation_interval,
        limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=bar,
        log_every_n_steps=10,
        benchmark=benchmark,
        deterministic=deterministic,
        # adaptation: every epoch's loader draws PK batches over the latest clusters
        reload_dataloaders_every_n_epochs=1 if config.adaptation.enable else 0,
    )


def cudnn_flags(cudnn: DictConfig, accelerator: str):
    """(benchmark, deterministic) for pl.Trainer from train.cudnn. On a GPU cuDNN autotuning stays on unless
    train.cudnn.deterministic asks for reproducible kernels; deterministic is "warn": ops without a
    deterministic implementation (e.g. some CUDA scatter/index_add backward passes) warn instead of failing."""
    deterministic = "warn" if cudnn.deterministic else None
    benchmark = bool(cudnn.benchmark) or (accelerator == "gpu" and not cudnn.deterministic)
    return benchmark, deterministic
