"""What `reid tune` builds from the spec: the default search space fitted to it, each trial's config (checked
like any spec), and the Optuna sampler and pruner (tune.sampler, tune.pruner, tune.seed, train.num_epochs)."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reid_tao.builders.spec import check_spec, loss_terms
from reid_tao.config.loader import rename_old_values, schema_config
from reid_tao.config.search_space import DEFAULT_SPACE
from reid_tao.config.validate import validate_config
from reid_tao.engine.tuning import OPTUNA_SAMPLERS, PRUNERS


def study_arguments(config: DictConfig) -> dict[str, Any]:
    """optuna.create_study's sampler and pruner (optuna is imported here, when a study is made)."""
    tune, num_epochs = config.tune, config.train.num_epochs
    return dict(
        sampler=OPTUNA_SAMPLERS[tune.sampler](tune.seed, num_epochs), pruner=PRUNERS[tune.pruner](tune.seed, num_epochs)
    )


def default_space(config: DictConfig) -> dict[str, dict[str, list]]:
    """DEFAULT_SPACE fitted to the spec: fields it does not train with are left out (the margin without a
    triplet loss that has one, label smoothing without the identity loss), and the warm-up is the field that
    train.optim.warmup_method reads, at most half of train.num_epochs (training shortens a longer one anyway)."""
    model, optim = config.model, config.train.optim
    terms = loss_terms(config.dataset.sampler, model.metric_loss_type, model.with_center_loss)
    space = dict(DEFAULT_SPACE)
    if "triplet" not in terms or model.no_margin:
        del space["train.optim.triplet_loss_margin"]
    if "id" not in terms:
        del space["model.label_smooth"]
    warmup = space.pop("train.optim.warmup_epochs")["int"]
    longest = min(warmup[1], config.train.num_epochs // 2)
    if longest > warmup[0]:
        field = "warmup_epochs" if optim.warmup_method == "cosine" else "warmup_iters"
        space[f"train.optim.{field}"] = {"int": [warmup[0], longest]}
    return space


def trial_config(base: DictConfig, values: Mapping[str, Any], folder: Path | None = None) -> DictConfig:
    """``base`` with a trial's values (and training folder), checked by the same rules as any spec."""
    config = OmegaConf.merge(schema_config(), OmegaConf.to_container(base, resolve=False))
    for path, value in values.items():
        OmegaConf.update(config, path, value, merge=False)
    if folder is not None:
        OmegaConf.update(config, "train.results_dir", str(folder))
    rename_old_values(config)
    validate_config(config)
    check_spec(config)
    OmegaConf.set_readonly(config, True)
    return config
