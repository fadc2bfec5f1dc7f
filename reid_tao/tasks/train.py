"""`reid train`: fit the model, checkpoint every epoch, resume automatically."""
import logging
import signal
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..builders import (
    adaptation_callbacks,
    adaptation_source_config,
    build_datamodule,
    build_module,
    check_resumable,
    checkpoint_settings,
    needs_validation,
    resume_path,
    training_num_classes,
    wandb_settings,
)
from ..config.notices import warmup_warning
from ..engine.callbacks import EpochSummary, StepLossBar, console_is_terminal
from ..engine.checkpoint import LATEST_NAME, BackgroundCheckpointIO, checkpoint_callbacks
from ..engine.devices import plan_devices
from ..engine.loggers import experiment_loggers
from ..engine.precision import cpu_has_native_bf16, precision_for
from ..engine.preemption import PreemptionCheckpoint
from ..engine.status import StatusCallback, StatusFile
from ..errors import ConfigError, Preempted
from .common import prepare_task, reported

log = logging.getLogger("reid_tao.train")
RESUME_FIELD = "train.resume_training_checkpoint_path"


def _check_dataset_fields(config: DictConfig) -> None:
    data = config.dataset
    if not data.train_dataset_dir:
        what = ("the unlabeled images (adaptation.enable=true)" if config.adaptation.enable
                else "a Market-1501 bounding_box_train folder")
        raise ConfigError(f"dataset.train_dataset_dir is not set; point it to {what}")
    if bool(data.query_dataset_dir) != bool(data.test_dataset_dir):
        raise ConfigError("set both dataset.query_dataset_dir and dataset.test_dataset_dir for validation, or neither")
    field = needs_validation(config)
    if field and not data.query_dataset_dir:
        raise ConfigError(f"{field} is a validation metric (train.checkpointer.enable_topk=true) but no validation "
                          "folders are set; set dataset.query_dataset_dir and dataset.test_dataset_dir, or monitor "
                          "train_loss")
    if data.synthetic and not Path(data.train_dataset_dir).is_dir():
        from ..data.synthetic import generate_synthetic_market

        root = Path(data.train_dataset_dir).parent
        log.info("dataset.synthetic=true: generating the synthetic Market-format dataset in %s", root)
        generate_synthetic_market(root)


def _check_resume(path: str, config: DictConfig, num_classes: int) -> None:
    check_resumable(path, RESUME_FIELD, config, num_classes, trust=config.model.trust_weights_file)


def build_trainer(config: DictConfig, results: Path, has_validation: bool, status: Optional[StatusFile] = None,
                  extra_callbacks=()) -> pl.Trainer:
    """The Trainer for train.*; with ``status``, epoch lines go to status.json."""
    train = config.train
    plan = plan_devices(train.accelerator, train.num_gpus, train.gpu_ids, train.num_nodes)
    precision = precision_for(train.precision, plan.accelerator, plan.devices[0] if plan.accelerator == "gpu" else None)
    log.info("devices: %s x %s on %d node(s), precision %s; global batch %d (dataset.batch_size is per process), "
             "base lr %g (not scaled with the number of processes)", plan.num_processes, plan.accelerator,
             plan.num_nodes, precision, config.dataset.batch_size * plan.num_processes * plan.num_nodes,
             train.optim.base_lr)
    if precision == "bf16-mixed" and plan.accelerator == "cpu" and not cpu_has_native_bf16():
        log.warning("train.precision=bf16-mixed: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
                    "emulated and trains slower than train.precision=32")
    multi_process = plan.num_processes * plan.num_nodes > 1
    sync_bn = train.sync_bn and multi_process and plan.accelerator == "gpu"
    if train.sync_bn and multi_process and not sync_bn:
        log.info("train.sync_bn: SyncBatchNorm needs GPUs; CPU processes keep per-process BatchNorm statistics")
    if sync_bn and train.compile:
        log.warning("train.sync_bn with train.compile: SyncBatchNorm syncs with the host in every BatchNorm "
                    "layer and breaks the compiled graph there; set train.sync_bn=false unless the per-GPU "
                    "batch is very small")
    benchmark, deterministic = cudnn_flags(train.cudnn, plan.accelerator)
    bar = console_is_terminal()  # else the EpochSummary line per epoch only
    return pl.Trainer(
        accelerator=plan.accelerator, devices=plan.devices, num_nodes=plan.num_nodes, strategy=plan.strategy,
        sync_batchnorm=sync_bn,
        precision=precision, max_epochs=train.num_epochs, default_root_dir=str(results),
        callbacks=[*checkpoint_callbacks(results, **checkpoint_settings(config)), EpochSummary(),
                   *([StatusCallback(status)] if status is not None else []),
                   # the bar reads the step loss back from the device when it redraws: every 10 steps on a GPU
                   *([StepLossBar(refresh_rate=10 if plan.accelerator == "gpu" else 1, leave=False)] if bar else []),
                   *extra_callbacks],
        # checkpoints are written in a background thread from a host snapshot (training does not wait)
        plugins=[BackgroundCheckpointIO(RESUME_FIELD, trust=config.model.trust_weights_file)],
        logger=experiment_loggers(results, wandb_settings(config)),
        check_val_every_n_epoch=train.validation_interval, limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0, use_distributed_sampler=False, enable_model_summary=False, enable_progress_bar=bar,
        log_every_n_steps=10, benchmark=benchmark, deterministic=deterministic,
        # adaptation: every epoch's loader draws PK batches over the latest clusters
        reload_dataloaders_every_n_epochs=1 if config.adaptation.enable else 0)


def cudnn_flags(cudnn: DictConfig, accelerator: str):
    """(benchmark, deterministic) for pl.Trainer from train.cudnn. On a GPU cuDNN autotuning stays on unless
    train.cudnn.deterministic asks for reproducible kernels; deterministic is "warn": ops without a
    deterministic implementation (e.g. some CUDA scatter/index_add backward passes) warn instead of failing."""
    deterministic = "warn" if cudnn.deterministic else None
    benchmark = bool(cudnn.benchmark) or (accelerator == "gpu" and not cudnn.deterministic)
    return benchmark, deterministic


class StepCounter(pl.Callback):
    """The training steps this process ran (0 when a resumed run had no epoch left to train)."""

    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps += 1


def _megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6


def checkpoints_line(results: Path) -> str:
    """The checkpoints in ``results`` and their sizes: the latest (resumes training) and the weights-only rest."""
    latest = results / f"{LATEST_NAME}.pth"
    others = sorted(path for path in results.glob("*.pth") if path != latest)
    parts = []
    if latest.is_file():
        parts.append(f"{latest.name} {_megabytes(latest):.0f} MB (with the optimiser state: resumes training)")
    # (model_step_* files keep the optimiser state too: resume points inside long epochs)
    kind = "" if any(path.name.startswith("model_step_") for path in others) else ", weights only"
    if len(others) == 1:
        parts.append(f"{others[0].name} {_megabytes(others[0]):.0f} MB{kind}")
    elif others:
        parts.append(f"{len(others)} more ({others[0].name} ... {others[-1].name}, "
                     f"{sum(_megabytes(path) for path in others):.0f} MB in all{kind})")
    return f"checkpoints in {results}: {', '.join(parts) if parts else 'none'}"


@reported("train")
def run(config: DictConfig, status: StatusFile, extra_callbacks=()) -> Path:
    """Train per the spec; ``extra_callbacks`` join the Trainer's (``reid tune`` adds its reporter)."""
    _check_dataset_fields(config)
    if config.adaptation.enable:  # the source checkpoint decides the model (one line says what differed)
        config = adaptation_source_config(config)
    results = prepare_task(config, "train")
    warning = warmup_warning(config)
    if warning:
        log.warning(warning)
    if config.train.seed >= 0:
        pl.seed_everything(config.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    adaptation = config.adaptation.enable
    num_classes = training_num_classes(config, datamodule)
    if not adaptation and config.dataset.num_classes != datamodule.num_classes:
        log.info("dataset.num_classes=%d is not needed: %d identities found in dataset.train_dataset_dir",
                 config.dataset.num_classes, datamodule.num_classes)
    checkpoint = resume_path(config, results)
    if checkpoint:
        _check_resume(checkpoint, config, num_classes)
        log.info("resuming from %s", checkpoint)
    module = build_module(config, num_classes, num_query=len(datamodule.query_records),
                          load_pretrained=checkpoint is None)
    # SIGTERM/SIGINT/SIGUSR1: finish the step, write reid_model_latest.pth, raise Preempted
    preemption = PreemptionCheckpoint(results / f"{LATEST_NAME}.pth")
    counter = StepCounter()
    callbacks = [preemption, counter, *extra_callbacks,
                 *adaptation_callbacks(config, module, resuming=checkpoint is not None)]
    trainer = build_trainer(config, results, datamodule.has_validation, status, extra_callbacks=callbacks)
    if not adaptation:  # (clusters are checked when each clustering sets them)
        # setup() ran before the Trainer existed (one process): check P x processes now, before any starts
        datamodule.check_identities_per_batch(trainer.world_size)
    datamodule.check_source_identities(trainer.world_size)
    with preemption.catching_signals():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        except SIGTERMException:  # Lightning's own handler, in the moment before ours replace it in fit
            raise Preempted("stopped by SIGTERM while training started, before a checkpoint of this run; "
                            "run the same command to resume", signal.SIGTERM) from None
    if checkpoint and counter.steps == 0:
        log.info("training finished: no epoch ran, %s already holds all train.num_epochs=%d epochs; raise "
                 "train.num_epochs to train on from it, or use a new results_dir to start afresh", checkpoint,
                 config.train.num_epochs)
    else:
        log.info("training finished")
    log.info(checkpoints_line(results))
    return results
