"""`reid train`: fit the model, checkpoint every epoch, resume automatically."""

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from reid_tao.builders import (
    RESUME_FIELD,
    adaptation_callbacks,
    adaptation_source_config,
    build_datamodule,
    build_module,
    build_trainer,
    check_resumable,
    needs_validation,
    resume_path,
    training_num_classes,
)
from reid_tao.config.notices import warmup_warning
from reid_tao.engine.callbacks import StepCounter
from reid_tao.engine.checkpoint import LATEST_NAME
from reid_tao.engine.preemption import PreemptionCheckpoint
from reid_tao.engine.status import StatusFile
from reid_tao.errors import ConfigError, Preempted
from reid_tao.tasks.common import prepare_task, reported

log = logging.getLogger("reid_tao.train")


def _check_dataset_fields(config: DictConfig) -> None:
    data = config.dataset
    if not data.train_dataset_dir:
        what = (
            "the unlabeled images (adaptation.enable=true)"
            if config.adaptation.enable
            else "a Market-1501 bounding_box_train folder"
        )
        raise ConfigError(f"dataset.train_dataset_dir is not set; point it to {what}")
    if bool(data.query_dataset_dir) != bool(data.test_dataset_dir):
        raise ConfigError("set both dataset.query_dataset_dir and dataset.test_dataset_dir for validation, or neither")
    field = needs_validation(config)
    if field and not data.query_dataset_dir:
        raise ConfigError(
            f"{field} is a validation metric (train.checkpointer.enable_topk=true) but no validation "
            "folders are set; set dataset.query_dataset_dir and dataset.test_dataset_dir, or monitor "
            "train_loss"
        )
    if data.synthetic and not Path(data.train_dataset_dir).is_dir():
        from reid_tao.data.synthetic import generate_synthetic_market

        root = Path(data.train_dataset_dir).parent
        log.info("dataset.synthetic=true: generating the synthetic Market-format dataset in %s", root)
        generate_synthetic_market(root)


def _check_resume(path: str, config: DictConfig, num_classes: int) -> None:
    check_resumable(path, RESUME_FIELD, config, num_classes, trust=config.model.trust_weights_file)


def _megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6


def _checkpoints_line(results: Path) -> str:
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
        parts.append(
            f"{len(others)} more ({others[0].name} ... {others[-1].name}, "
            f"{sum(_megabytes(path) for path in others):.0f} MB in all{kind})"
        )
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
        log.info(
            "dataset.num_classes=%d is not needed: %d identities found in dataset.train_dataset_dir",
            config.dataset.num_classes,
            datamodule.num_classes,
        )
    checkpoint = resume_path(config, results)
    if checkpoint:
        _check_resume(checkpoint, config, num_classes)
        log.info("resuming from %s", checkpoint)
    module = build_module(
        config, num_classes, num_query=len(datamodule.query_records), load_pretrained=checkpoint is None
    )
    # SIGTERM/SIGINT/SIGUSR1: finish the step, write reid_model_latest.pth, raise Preempted
    preemption = PreemptionCheckpoint(results / f"{LATEST_NAME}.pth")
    counter = StepCounter()
    callbacks = [
        preemption,
        counter,
        *extra_callbacks,
        *adaptation_callbacks(config, module, resuming=checkpoint is not None),
    ]
    trainer = build_trainer(config, results, datamodule.has_validation, status, extra_callbacks=callbacks)
    if not adaptation:  # (clusters are checked when each clustering sets them)
        # setup() ran before the Trainer existed (one process): check P x processes now, before any starts
        datamodule.check_identities_per_batch(trainer.world_size)
    datamodule.check_source_identities(trainer.world_size)
    with preemption.catching_signals():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        except SIGTERMException:  # Lightning's own handler, in the moment before ours replace it in fit
            raise Preempted(
                "stopped by SIGTERM while training started, before a checkpoint of this run; "
                "run the same command to resume",
                signal.SIGTERM,
            ) from None
    if checkpoint and counter.steps == 0:
        log.info(
            "training finished: no epoch ran, %s already holds all train.num_epochs=%d epochs; raise "
            "train.num_epochs to train on from it, or use a new results_dir to start afresh",
            checkpoint,
            config.train.num_epochs,
        )
    else:
        log.info("training finished")
    log.info(_checkpoints_line(results))
    return results
