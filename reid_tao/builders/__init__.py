"""The one place where a spec (OmegaConf config) is mapped onto the plain-argument constructors.

Everything below this layer (model, data, evaluation, engine) takes plain arguments and raises ValueError
naming them; the config layer checks the spec's own rules. By concern:
- spec: checks that need the implementations' tables (:func:`check_spec`), and :func:`load_experiment`;
- pretrained: a new model's initial weights (model.pretrain_choice);
- training: data module, model, loss, optimiser/schedule, checkpoint settings, the LightningModule;
- checkpoints: which trained checkpoint a task reads, and rebuilding reid_tao's and TAO's models from it;
- adaptation: the callbacks of adaptation.enable (pseudo labels, source interpolation).
"""
from .adaptation import adaptation_callbacks
from .checkpoints import (
                          ARCHITECTURE_FIELDS,
                          ARCHITECTURES,
                          TrainedModel,
                          adaptation_source_config,
                          check_resumable,
                          load_embedding_model,
                          load_trained_model,
                          resume_path,
                          task_checkpoint,
                          trained_num_classes,
)
from .pretrained import PRETRAINED_LOADERS
from .spec import (
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
from .training import (
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
                          scheduler_arguments,
                          training_num_classes,
                          wandb_settings,
)

__all__ = ["ADAPTATION_NUM_CLASSES", "ARCHITECTURES", "ARCHITECTURE_FIELDS", "BACKBONE_OPTION_FIELDS", "BATCH_RECIPES",
           "BatchRecipe", "METRIC_LOSSES", "MetricLoss", "PRETRAINED_LOADERS", "TrainedModel", "adaptation_callbacks",
           "adaptation_source_config", "backbone_options", "build_datamodule", "build_loss", "build_model",
           "build_module", "check_choice", "check_resumable", "check_spec", "checkpoint_metadata",
           "checkpoint_settings", "extraction_batch_size", "image_size", "load_embedding_model", "load_experiment",
           "load_trained_model", "loss_terms", "needs_validation", "optimizer_arguments", "preprocessing_for",
           "resolve_choices", "resume_path", "scheduler_arguments", "spec_fields_markdown", "table_choices_module",
           "task_checkpoint",
           "trained_num_classes", "training_num_classes", "wandb_settings"]
