"""The spec's checks that need the implementations' tables (backbones, samplers, pipelines, optimisers, ...).

The config layer checks the spec's own rules; what depends on a table of an implementation is checked here,
in spec field names, so a new table entry needs no second list anywhere.
"""
from typing import List, NamedTuple, Optional, Tuple

from omegaconf import DictConfig

from ..config.loader import closest_hint, load_config, schema_config
from ..data.gpu_pipeline import PIPELINES
from ..data.tracks import TRACK_FORMATS
from ..data.transforms import INTERPOLATIONS
from ..engine.checkpoint import INTERVAL_UNITS
from ..engine.devices import ACCELERATORS
from ..engine.module import METRIC_MODES
from ..engine.optim import WARMUP_METHODS, optimizer_class
from ..engine.precision import PRECISIONS
from ..errors import ConfigError
from ..evaluation.plots import QUERY_CHOICES
from ..model.backbones import BACKBONES
from ..model.baseline import NECK_FEATURES, NECKS
from ..model.losses import ID_LOSSES
from .pretrained import PRETRAINED_LOADERS


class Sampler(NamedTuple):
    pk_batches: bool  # PK batches (else shuffled: most anchors of a shuffled batch have no positive)
    id_loss: bool
    triplet_loss: bool


# dataset.sampler -> the batches it draws and the losses it trains with (TAO's meaning of the names).
SAMPLERS = {"softmax": Sampler(pk_batches=False, id_loss=True, triplet_loss=False),
            "triplet": Sampler(pk_batches=True, id_loss=False, triplet_loss=True),
            "softmax_triplet": Sampler(pk_batches=True, id_loss=True, triplet_loss=True)}
# model.metric_loss_type -> (keeps the sampler's triplet loss, adds the center loss).
METRIC_LOSSES = {"triplet": (True, False), "center": (False, True), "triplet_center": (True, True)}
# model.backbone options per spec field (a field applies only to backbones whose entry lists its option).
BACKBONE_OPTION_FIELDS = {"last_stride": "last_stride", "dropout_rate": "drop_rate", "drop_path": "drop_path_rate",
                          "att_drop_rate": "attn_drop_rate"}



# ------------------------------------------------------------------------------------------ the spec
def load_experiment(spec_path: Optional[str], overrides: List[str] = ()) -> DictConfig:
    """Spec file + overrides -> validated, read-only config: the config layer's rules, then :func:`check_spec`."""
    config = load_config(spec_path, overrides)
    check_spec(config)
    return config


def _choice(field: str, value, table, hint: str = "") -> None:
    if value not in table:
        shown = ", ".join(repr(name) for name in table)
        raise ConfigError(f"{field}={value!r} is not supported{hint}; choose one of {shown}"
                          f"{closest_hint(str(value), [str(name) for name in table])}")


def check_spec(config: DictConfig) -> None:
    """Check the spec's names and per-backbone rules against the implementations' tables."""
    model, data, train, optim = config.model, config.dataset, config.train, config.train.optim
    _choice("model.backbone", model.backbone, BACKBONES)
    _choice("model.pretrain_choice", model.pretrain_choice, PRETRAINED_LOADERS)
    _choice("model.neck", model.neck, NECKS)
    _choice("model.neck_feat", model.neck_feat, NECK_FEATURES)
    _choice("model.metric_loss_type", model.metric_loss_type, METRIC_LOSSES)
    _choice("model.id_loss_type", model.id_loss_type, ID_LOSSES,
            " (margin heads are broken in TAO and not implemented here)")
    _choice("dataset.sampler", data.sampler, SAMPLERS)
    _choice("dataset.interpolation", data.interpolation, INTERPOLATIONS)
    _choice("dataset.pipeline", data.pipeline, PIPELINES)
    _choice("train.optim.warmup_method", optim.warmup_method, WARMUP_METHODS)
    _choice("train.checkpoint_interval_unit", train.checkpoint_interval_unit, INTERVAL_UNITS)
    if train.checkpointer.monitor is not None:
        _choice("train.checkpointer.monitor", train.checkpointer.monitor, METRIC_MODES)
    _choice("evaluate.sampled_matches", config.evaluate.sampled_matches, QUERY_CHOICES)
    _choice("crops.format", config.crops.format, TRACK_FORMATS)
    for section in ("train", "evaluate", "inference"):
        _choice(f"{section}.precision", config[section].precision, PRECISIONS)
    for section in ("train", "evaluate", "inference"):
        _choice(f"{section}.accelerator", config[section].accelerator, ACCELERATORS)
    try:
        optimizer_class(optim.name)
    except ValueError as error:
        raise ConfigError(f"train.optim.name: {error}") from None
    loss_components(data.sampler, model.metric_loss_type, model.with_center_loss)
    if SAMPLERS[data.sampler].pk_batches:
        if data.batch_size % data.num_instances:
            raise ConfigError(f"dataset.batch_size={data.batch_size} must be divisible by "
                              f"dataset.num_instances={data.num_instances} for the PK sampler")
        if data.batch_size // data.num_instances < 2:
            raise ConfigError("dataset.batch_size / dataset.num_instances must be at least 2 identities per batch "
                              "for the triplet loss")

    check_adaptation(config)

    entry = BACKBONES[model.backbone]
    defaults = schema_config().model
    for field, option in BACKBONE_OPTION_FIELDS.items():
        if option not in entry.options and model[field] != defaults[field]:
            families = sorted({other.family for other in BACKBONES.values() if option in other.options})
            raise ConfigError(f"model.{field} applies to {'/'.join(families)} backbones only, not "
                              f"model.backbone={model.backbone}; remove it from the spec")
    if entry.reduces_to_feat_dim and model.reduce_feat_dim:
        raise ConfigError(f"model.reduce_feat_dim applies to backbones without a default reduction, not "
                          f"model.backbone={model.backbone} (it always reduces to model.feat_dim); remove it")
    if model.input_height % entry.input_multiple or model.input_width % entry.input_multiple:
        raise ConfigError(f"model.backbone={model.backbone} needs model.input_height and model.input_width "
                          f"divisible by {entry.input_multiple}, got {model.input_height}x{model.input_width}")


def check_adaptation(config: DictConfig) -> None:
    """adaptation.enable needs a model to adapt and PK batches over the clusters; the center loss (one center
    per identity) does not fit identities that change with every clustering."""
    if not config.adaptation.enable:
        return
    if not config.adaptation.source_checkpoint:
        raise ConfigError("adaptation.enable=true needs adaptation.source_checkpoint: the reid_tao or TAO checkpoint "
                          "of the model to adapt")
    if not SAMPLERS[config.dataset.sampler].pk_batches:
        raise ConfigError(f"adaptation trains on PK batches over the clusters; dataset.sampler="
                          f"{config.dataset.sampler!r} draws shuffled batches: use softmax_triplet or triplet")
    if loss_components(config.dataset.sampler, config.model.metric_loss_type, config.model.with_center_loss)[2]:
        raise ConfigError("the center loss (model.metric_loss_type center/triplet_center, model.with_center_loss) "
                          "does not apply with adaptation.enable=true: its identities change with every clustering")


def loss_components(sampler: str, metric_loss_type: str, with_center_loss: bool) -> Tuple[bool, bool, bool]:
    """(use_id, use_triplet, use_center) for dataset.sampler, model.metric_loss_type, model.with_center_loss.

    The sampler decides ID and triplet; metric type "center" replaces the triplet loss by the center loss
    (BoT), "triplet_center" adds it, and with_center_loss adds it to whatever was selected.
    """
    _choice("dataset.sampler", sampler, SAMPLERS)
    _choice("model.metric_loss_type", metric_loss_type, METRIC_LOSSES)
    use_id, sampler_triplet = SAMPLERS[sampler].id_loss, SAMPLERS[sampler].triplet_loss
    keeps_triplet, adds_center = METRIC_LOSSES[metric_loss_type]
    use_triplet = sampler_triplet and keeps_triplet
    if not use_id and not use_triplet:
        # sampler triplet + metric center: only the center loss would remain, and alone it collapses.
        raise ConfigError("dataset.sampler 'triplet' with model.metric_loss_type 'center' leaves only the "
                          "center loss; use sampler softmax_triplet or metric_loss_type triplet_center")
    return use_id, use_triplet, adds_center or bool(with_center_loss)
