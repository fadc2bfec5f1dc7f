"""The spec's checks that need the implementations' tables (backbones, samplers, pipelines, optimisers, ...).

The config layer checks the spec's own rules; what depends on a table of an implementation is checked here,
in spec field names, so a new table entry needs no second list anywhere.
"""

import importlib
import json
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from reid_tao.config.catalog import SpecField, check_choice_in, find_field, literal_choices, markdown_table, spec_fields
from reid_tao.config.fields import Choices
from reid_tao.config.loader import load_config, schema_config
from reid_tao.engine.optim import optimizer_class
from reid_tao.errors import ConfigError
from reid_tao.model.backbones import BACKBONES
from reid_tao.model.losses import LOSS_TERMS


class BatchRecipe(NamedTuple):
    pk_batches: bool  # PK batches (else shuffled: most anchors of a shuffled batch have no positive)
    terms: tuple[str, ...]  # the LOSS_TERMS it trains with


class MetricLoss(NamedTuple):
    drops: tuple[str, ...]  # LOSS_TERMS removed from the batch recipe's
    adds: tuple[str, ...]  # LOSS_TERMS added


# dataset.sampler -> the batches it draws and the loss terms it trains with (TAO's meaning of the names).
BATCH_RECIPES = {
    "softmax": BatchRecipe(pk_batches=False, terms=("id",)),
    "triplet": BatchRecipe(pk_batches=True, terms=("triplet",)),
    "softmax_triplet": BatchRecipe(pk_batches=True, terms=("id", "triplet")),
}
# model.metric_loss_type -> how it changes the sampler's terms (BoT: "center" replaces the triplet loss).
METRIC_LOSSES = {
    "triplet": MetricLoss(drops=(), adds=()),
    "center": MetricLoss(drops=("triplet",), adds=("center",)),
    "triplet_center": MetricLoss(drops=(), adds=("center",)),
}
# model.with_center_loss: True adds these terms to whatever was selected.
WITH_CENTER_LOSS = ("center",)
# adaptation.enable: these pseudo-label terms take the ID loss's place (no classifier: the identities change with
# every clustering); the center loss does not apply for the same reason.
ADAPTATION_TERMS = MetricLoss(drops=("id", "center"), adds=("memory", "camera"))
# adaptation.source_dataset_dir: the labelled source batch trains with BoT's losses (the classifier has one row per
# source identity).
SOURCE_TERMS = ("id", "triplet")
# model.backbone options per spec field (a field applies only to backbones whose entry lists its option).
BACKBONE_OPTION_FIELDS = {
    "last_stride": "last_stride",
    "dropout_rate": "drop_rate",
    "drop_path": "drop_path_rate",
    "att_drop_rate": "attn_drop_rate",
}


# ------------------------------------------------------------------------------------------ the spec
def load_experiment(spec_path: str | None, overrides: list[str] = ()) -> DictConfig:
    """Spec file + overrides -> validated, read-only config: the config layer's rules, then :func:`check_spec`."""
    config = load_config(spec_path, overrides)
    check_spec(config)
    return config


def resolve_choices(choices: Choices) -> tuple[Any, ...]:
    """A field's choices: the literal tuple, or the keys (items) of the table named "module:TABLE" (a function
    named so is called: its table is derived, e.g. the metric names from the loss terms)."""
    literal = literal_choices(choices)
    if literal is not None:
        return literal
    module, _, name = choices.partition(":")
    table = getattr(importlib.import_module(module), name)
    return tuple(table() if callable(table) else table)


def check_choice(path: str, value, found: SpecField | None = None) -> None:
    """``value`` is one of the choices of the spec field ``path`` (None passes where None is the default)."""
    found = found or find_field(path)
    if value is None and found.default is None:
        return
    check_choice_in(found, value, resolve_choices(found.meta.choices))


def spec_fields_markdown() -> str:
    """The text of docs/spec_fields.md (``python scripts/gen_spec_fields.py`` writes it)."""
    return markdown_table(resolve_choices)


def table_choices_module() -> str:
    """The text of reid_tao/config/table_choices.py (``python scripts/gen_spec_fields.py`` writes it): the choices
    of every table-backed field, which `reid TASK --help SECTION` shows without importing the tables (torch)."""
    tables = sorted({found.meta.choices for found in spec_fields() if isinstance(found.meta.choices, str)})
    lines = [
        '"""The choices of the table-backed spec fields, for `reid TASK --help SECTION` without importing torch.',
        "",
        "Generated from the implementations' tables by `python scripts/gen_spec_fields.py`; do not edit by hand",
        '(tests/test_spec_fields.py fails while it is stale). Validation always reads the tables themselves."""',
        "",
        "TABLE_CHOICES = {",
    ]
    for table in tables:
        values = tuple(resolve_choices(table))
        line = f"    {_literal(table)}: ({', '.join(map(_literal, values))}{',' if len(values) == 1 else ''}),"
        if len(line) <= 120:
            lines.append(line)
        else:  # wrapped as ruff format does: one line per value
            lines += [f"    {_literal(table)}: ("] + [f"        {_literal(value)}," for value in values] + ["    ),"]
    return "\n".join(lines + ["}", ""])


def _literal(value) -> str:
    """``value`` as ruff format writes it: strings in double quotes."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def check_spec(config: DictConfig) -> None:
    """Check the spec's names against the implementations' tables, and the per-backbone rules."""
    model, data, optim = config.model, config.dataset, config.train.optim
    for found in spec_fields():
        if isinstance(found.meta.choices, str):  # a table name; written-out choices are the config layer's
            check_choice(found.path, OmegaConf.select(config, found.path), found)
    try:
        optimizer_class(optim.name)
    except ValueError as error:
        raise ConfigError(f"train.optim.name: {error}") from None
    loss_terms(data.sampler, model.metric_loss_type, model.with_center_loss)
    if BATCH_RECIPES[data.sampler].pk_batches:
        if data.batch_size % data.num_instances:
            raise ConfigError(
                f"dataset.batch_size={data.batch_size} must be divisible by "
                f"dataset.num_instances={data.num_instances} for the PK sampler"
            )
        if data.batch_size // data.num_instances < 2:
            raise ConfigError(
                "dataset.batch_size / dataset.num_instances must be at least 2 identities per batch "
                "for the triplet loss"
            )

    check_adaptation(config)

    entry = BACKBONES[model.backbone]
    defaults = schema_config().model
    for field, option in BACKBONE_OPTION_FIELDS.items():
        if option not in entry.options and model[field] != defaults[field]:
            families = sorted({other.family for other in BACKBONES.values() if option in other.options})
            raise ConfigError(
                f"model.{field} applies to {'/'.join(families)} backbones only, not "
                f"model.backbone={model.backbone}; remove it from the spec"
            )
    if entry.reduces_to_feat_dim and model.reduce_feat_dim:
        raise ConfigError(
            f"model.reduce_feat_dim applies to backbones without a default reduction, not "
            f"model.backbone={model.backbone} (it always reduces to model.feat_dim); remove it"
        )
    if model.input_height % entry.input_multiple or model.input_width % entry.input_multiple:
        raise ConfigError(
            f"model.backbone={model.backbone} needs model.input_height and model.input_width "
            f"divisible by {entry.input_multiple}, got {model.input_height}x{model.input_width}"
        )


def check_adaptation(config: DictConfig) -> None:
    """adaptation.enable needs a model to adapt and PK batches over the clusters; the center loss (one center
    per identity) does not fit identities that change with every clustering."""
    if not config.adaptation.enable:
        return
    if not config.adaptation.source_checkpoint:
        raise ConfigError(
            "adaptation.enable=true needs adaptation.source_checkpoint: the reid_tao or TAO checkpoint "
            "of the model to adapt"
        )
    if not BATCH_RECIPES[config.dataset.sampler].pk_batches:
        raise ConfigError(
            f"adaptation trains on PK batches over the clusters; dataset.sampler="
            f"{config.dataset.sampler!r} draws shuffled batches: use softmax_triplet or triplet"
        )
    if "center" in loss_terms(config.dataset.sampler, config.model.metric_loss_type, config.model.with_center_loss):
        raise ConfigError(
            "the center loss (model.metric_loss_type center/triplet_center, model.with_center_loss) "
            "does not apply with adaptation.enable=true: its identities change with every clustering"
        )


def loss_terms(
    sampler: str, metric_loss_type: str, with_center_loss: bool, adaptation: bool = False
) -> tuple[str, ...]:
    """The LOSS_TERMS names (in the table's order) for dataset.sampler, model.metric_loss_type,
    model.with_center_loss and adaptation.enable.

    The sampler decides ID and triplet; metric type "center" replaces the triplet loss by the center loss
    (BoT), "triplet_center" adds it, and with_center_loss adds it to whatever was selected. Adaptation then
    swaps the ID loss for ADAPTATION_TERMS.
    """
    check_choice("dataset.sampler", sampler)
    check_choice("model.metric_loss_type", metric_loss_type)
    metric = METRIC_LOSSES[metric_loss_type]
    chosen = (set(BATCH_RECIPES[sampler].terms) - set(metric.drops)) | set(metric.adds)
    if with_center_loss:
        chosen |= set(WITH_CENTER_LOSS)
    if adaptation:
        chosen = (chosen - set(ADAPTATION_TERMS.drops)) | set(ADAPTATION_TERMS.adds)
    unknown = chosen - set(LOSS_TERMS)
    if unknown:  # a table entry naming a term that is not registered: a programming error
        raise ValueError(f"loss terms {sorted(unknown)} are not in LOSS_TERMS")
    names = tuple(name for name in LOSS_TERMS if name in chosen)
    if not any(LOSS_TERMS[name].standalone for name in names):
        # sampler triplet + metric center: only the center loss would remain, and alone it collapses.
        raise ConfigError(
            f"dataset.sampler {sampler!r} with model.metric_loss_type {metric_loss_type!r} leaves "
            f"only the {' and '.join(names)} loss; use sampler softmax_triplet or metric_loss_type "
            "triplet_center"
        )
    return names
