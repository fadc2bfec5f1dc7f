"""The one place where a spec (OmegaConf config) is mapped onto the plain-argument constructors.

Everything below this layer (model, data, evaluation, engine) takes plain arguments and raises ValueError
naming them; the config layer checks the spec's own rules. By concern:
- spec: checks that need the implementations' tables (:func:`check_spec`), and :func:`load_experiment`;
- pretrained: a new model's initial weights (model.pretrain_choice);
- training: data module, model, loss, optimiser/schedule, checkpoint settings, the LightningModule;
- trainer: the Lightning Trainer of `reid train` (devices, precision, cuDNN flags, callbacks, loggers);
- checkpoints: which trained checkpoint a task reads, rebuilding reid_tao's and TAO's models from it, and the
  model section a task runs (the checkpoint's, not the spec's);
- extraction: features of a dataset with a task's settings, from a PyTorch or an exported ONNX model;
- export: where `reid export` writes its model;
- tuning: `reid tune`'s default search space, trial configs, Optuna sampler and pruner;
- adaptation: the callbacks of adaptation.enable (pseudo labels, source interpolation).
"""

from reid_tao.builders.adaptation import adaptation_callbacks
from reid_tao.builders.checkpoints import (
    ARCHITECTURE_FIELDS,
    ARCHITECTURES,
    SPEC_MODEL_FIELDS,
    TrainedModel,
    adaptation_source_config,
    check_resumable,
    checkpoint_model_config,
    load_embedding_model,
    load_trained_model,
    resume_path,
    task_checkpoint,
    trained_num_classes,
)
from reid_tao.builders.export import onnx_path_for
from reid_tao.builders.extraction import extract_features, extraction_precision, feature_batches
from reid_tao.builders.pretrained import PRETRAINED_LOADERS
from reid_tao.builders.spec import (
    BACKBONE_OPTION_FIELDS,
    BATCH_RECIPES,
    METRIC_LOSSES,
    BatchRecipe,
    MetricLoss,
    check_choice,
    check_spec,
    load_experiment,
    loss_terms,
    resolve_choices,
    spec_fields_markdown,
    table_choices_module,
)
from reid_tao.builders.trainer import RESUME_FIELD, build_trainer, cudnn_flags
from reid_tao.builders.training import (
    ADAPTATION_NUM_CLASSES,
    backbone_options,
    build_datamodule,
    build_loss,
    build_model,
    build_module,
    checkpoint_metadata,
    checkpoint_settings,
    extraction_batch_size,
    image_size,
    needs_validation,
    optimizer_arguments,
    preprocessing_for,
    re_ranking_arguments,
    scheduler_arguments,
    training_num_classes,
    wandb_settings,
)
from reid_tao.builders.tuning import default_space, study_arguments, trial_config

__all__ = [
    "ADAPTATION_NUM_CLASSES",
    "ARCHITECTURES",
    "ARCHITECTURE_FIELDS",
    "BACKBONE_OPTION_FIELDS",
    "METRIC_LOSSES",
    "MetricLoss",
    "PRETRAINED_LOADERS",
    "RESUME_FIELD",
    "BATCH_RECIPES",
    "SPEC_MODEL_FIELDS",
    "BatchRecipe",
    "TrainedModel",
    "adaptation_callbacks",
    "adaptation_source_config",
    "backbone_options",
    "build_datamodule",
    "build_loss",
    "build_model",
    "build_module",
    "build_trainer",
    "check_choice",
    "check_resumable",
    "check_spec",
    "checkpoint_metadata",
    "checkpoint_model_config",
    "checkpoint_settings",
    "cudnn_flags",
    "default_space",
    "extract_features",
    "extraction_batch_size",
    "extraction_precision",
    "feature_batches",
    "image_size",
    "load_embedding_model",
    "load_experiment",
    "load_trained_model",
    "loss_terms",
    "needs_validation",
    "onnx_path_for",
    "optimizer_arguments",
    "preprocessing_for",
    "re_ranking_arguments",
    "resolve_choices",
    "resume_path",
    "scheduler_arguments",
    "spec_fields_markdown",
    "study_arguments",
    "table_choices_module",
    "task_checkpoint",
    "trained_num_classes",
    "training_num_classes",
    "trial_config",
    "wandb_settings",
]
