"""Trained checkpoints: which one a task uses, and rebuilding its model (reid_tao's own and TAO's)."""

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from reid_tao.builders.spec import check_spec
from reid_tao.builders.training import build_model, preprocessing_for
from reid_tao.config.loader import check_stored_data, load_stored_config, schema_config, task_results_dir
from reid_tao.config.schema import MAX_INPUT_SIDE
from reid_tao.config.validate import validate_config
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.deploy.runtime import OnnxModel, is_onnx_file
from reid_tao.engine.checkpoint import LATEST_NAME
from reid_tao.errors import ConfigError, DataError, first_line
from reid_tao.io.checkpoint_file import REID_TAO, TAO, CheckpointFile, read_checkpoint_file
from reid_tao.model.tao_baseline import TAO_RESNET_LAYERS, TAO_RESNET_WIDTH, TaoBaseline, TaoResNet, tao_resnet_layers

log = logging.getLogger(__name__)


def task_checkpoint(config: DictConfig, task: str) -> str:
    """<task>.checkpoint, or, when unset, the latest checkpoint of this results_dir's training (said in the log)."""
    own = config[task].checkpoint
    if own:
        return own
    latest = task_results_dir(config, "train") / f"{LATEST_NAME}.pth"
    if not latest.is_file():
        raise ConfigError(
            f"{task}.checkpoint is not set and there is no {latest} to fall back to; "
            f"pass {task}.checkpoint=/path/to/reid_model_latest.pth"
        )
    log.info("%s.checkpoint is not set: using %s", task, latest)
    return str(latest)


class TrainedModel(NamedTuple):
    model: nn.Module  # in eval mode, on the CPU; eval forward gives embeddings, .feat_dim their width
    preprocessing: Preprocessing
    config: DictConfig  # the training run's config (for a TAO checkpoint: the settings it was rebuilt with)


def load_trained_model(path: str, field: str, config: DictConfig | None = None, trust: bool = False) -> TrainedModel:
    """Rebuild a trained model from a checkpoint of any known architecture (see ARCHITECTURES).

    ``config`` is the current spec: a TAO checkpoint without hyper-parameters takes its test-time settings
    (neck_feat, last_stride, input size, mean/std) from it. ``trust``: model.trust_weights_file, full
    unpickling allowed.
    """
    checkpoint = read_checkpoint_file(path, field, trust=trust)
    for architecture in ARCHITECTURES.values():
        if architecture.detect(checkpoint):
            trained = architecture.rebuild(checkpoint, config)
            trained.model.eval()
            return trained
    raise DataError(
        f"{field}: {path} is neither a reid_tao checkpoint nor a TAO ReIdentificationNet checkpoint "
        "(no reid_tao metadata, no model.base.* weights); use a file written by `reid train` or TAO"
    )


def load_embedding_model(
    path: str, field: str, config: DictConfig, section: DictConfig, trust: bool = False
) -> tuple[Callable, Preprocessing, DictConfig | None]:
    """(model, preprocessing, the training config) of a trained checkpoint (.pth, see :func:`load_trained_model`)
    or of an exported model (.onnx of any data type: onnxruntime on ``section``'s accelerator, preprocessing from
    its sidecar; no training config)."""
    if is_onnx_file(path):
        model = OnnxModel(path, field, section.accelerator, section.gpu_ids[0])
        return model, model.preprocessing, None
    trained = load_trained_model(path, field, config, trust=trust)
    return trained.model, trained.preprocessing, trained.config


def _rebuild_reid_tao(checkpoint: CheckpointFile, config: DictConfig | None) -> TrainedModel:
    """Our Baseline from the config and num_classes stored in a reid_tao checkpoint, both read as data and
    checked like a spec before anything is built (a crafted file gets one line, not a traceback or 17 GB)."""
    source = checkpoint.source
    metadata = _stored_metadata(checkpoint)
    trained_config = stored_training_config(metadata, source)
    num_classes = _stored_num_classes(metadata, checkpoint)
    model = build_model(trained_config, num_classes, load_pretrained=False)
    try:
        result = model.load_state_dict(checkpoint.model_state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise DataError(
            f"{source}: its weights do not fit the {trained_config.model.backbone} model its config "
            f"describes ({first_line(error, limit=200)})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise DataError(
            f"{source}: its weights do not fit the {trained_config.model.backbone} model its config "
            f"describes (missing {', '.join(result.missing_keys[:3]) or '-'}; unexpected "
            f"{', '.join(result.unexpected_keys[:3]) or '-'}); is the file complete?"
        )
    stored = metadata.get("preprocessing")
    try:
        preprocessing = Preprocessing.from_dict(stored) if stored else preprocessing_for(trained_config)
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{source}: its stored preprocessing is invalid ({first_line(error, limit=200)})") from None
    if max(preprocessing.input_size) > MAX_INPUT_SIDE:
        raise DataError(
            f"{source}: its stored input size {list(preprocessing.input_size)} is over {MAX_INPUT_SIDE} pixels a side"
        )
    return TrainedModel(model, preprocessing, trained_config)


def _stored_metadata(checkpoint: CheckpointFile) -> dict[str, Any]:
    metadata = checkpoint.metadata
    if not isinstance(metadata, dict):
        raise DataError(
            f"{checkpoint.source}: its reid_tao metadata is a {type(metadata).__name__}, not a "
            "mapping; use a file written by `reid train`"
        )
    return metadata


def stored_training_config(metadata: dict[str, Any], source: str) -> DictConfig:
    """The training config stored in a reid_tao checkpoint: read as data, checked like a spec."""
    trained_config = load_stored_config(metadata.get("config"), source)
    try:
        check_spec(trained_config)
    except ConfigError as error:
        raise DataError(f"{source}: its stored config is invalid: {error}") from None
    return trained_config


MAX_STORED_CLASSES = 1_000_000  # identities; the largest re-id sets have a few tens of thousands


def _stored_num_classes(metadata: dict[str, Any], checkpoint: CheckpointFile) -> int:
    """num_classes as stored: a positive int agreeing with the classifier's rows (it sizes the classifier)."""
    source = checkpoint.source
    value = metadata.get("num_classes")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{source}: its stored num_classes {value!r} is not a positive whole number")
    if value > MAX_STORED_CLASSES:  # it sizes the classifier before any weight is read
        raise DataError(f"{source}: its stored num_classes {value} is over {MAX_STORED_CLASSES}")
    classifier = checkpoint.model_state.get("classifier.weight")
    if isinstance(classifier, torch.Tensor) and classifier.dim() == 2 and classifier.shape[0] != value:
        raise DataError(
            f"{source}: its stored num_classes {value} disagrees with its classifier ({classifier.shape[0]} rows)"
        )
    return value


# What a TAO checkpoint's weights do not tell: taken from its hyper-parameters, else from the current spec.
TAO_SETTINGS = {
    "model": ("backbone", "last_stride", "neck_feat", "input_height", "input_width"),
    "dataset": ("pixel_mean", "pixel_std"),
}


def _tao_settings(checkpoint: CheckpointFile, config: DictConfig | None) -> tuple[DictConfig, str]:
    """The current spec (or the defaults) with TAO_SETTINGS replaced by the checkpoint's hyper-parameters."""
    base = OmegaConf.to_container(config if config is not None else schema_config(), resolve=True)
    hparams = checkpoint.hyper_parameters
    if isinstance(hparams, DictConfig):
        hparams = OmegaConf.to_container(hparams, resolve=False)  # data: never resolved here
    spec = hparams.get("experiment_spec", hparams) if isinstance(hparams, Mapping) else None
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=False)
    taken = {}
    if isinstance(spec, Mapping):
        for section, names in TAO_SETTINGS.items():
            stored = spec.get(section)
            if isinstance(stored, Mapping):
                taken[section] = {name: stored[name] for name in names if stored.get(name) is not None}
    check_stored_data(taken, "the checkpoint's hyper_parameters")
    found = sum(len(values) for values in taken.values())
    origin = (
        "the checkpoint's hyper_parameters"
        if found
        else "the current spec (model.*, dataset.*)"
        if config is not None
        else "reid_tao's defaults"
    )
    if found and found < sum(len(names) for names in TAO_SETTINGS.values()):
        origin += ", the rest from the current spec"
    try:
        settings = OmegaConf.merge(schema_config(), base, taken)
        validate_config(settings)
    except (OmegaConfBaseException, ConfigError) as error:
        raise DataError(f"the TAO checkpoint's hyper_parameters are invalid: {first_line(error, limit=200)}") from None
    return settings, origin


def _rebuild_tao_resnet(checkpoint: CheckpointFile, config: DictConfig | None) -> TrainedModel:
    """TAO's own ResNet network (see reid_tao.model.tao_baseline) from the weights' shapes and TAO's settings."""
    source = checkpoint.source
    if checkpoint.encrypted:
        raise DataError(f"{source} is encrypted by TAO; decrypt it with TAO (its encryption key) first")
    state = checkpoint.model_state
    if "classifier.weight" not in state:
        raise DataError(f"{source} is a TAO checkpoint without model.classifier.weight; is the file complete?")
    settings, origin = _tao_settings(checkpoint, config)
    layers = tao_resnet_layers(state)
    feature = state.get("base.feature.weight")
    feat_dim = int(feature.shape[0]) if feature is not None else TAO_RESNET_WIDTH
    neck = "bnneck" if "bottleneck.weight" in state else ""
    num_classes = int(state["classifier.weight"].shape[0])
    name = settings.model.backbone
    if TAO_RESNET_LAYERS.get(name) != layers:  # the weights decide; the spec's name may be another one
        name = next((known for known, counts in TAO_RESNET_LAYERS.items() if counts == layers), name)
    try:
        model = TaoBaseline(
            TaoResNet(layers, last_stride=settings.model.last_stride, feat_dim=feat_dim),
            num_classes=num_classes,
            neck=neck,
            neck_feat=settings.model.neck_feat,
        )
    except ValueError as error:
        raise DataError(f"{source}: cannot rebuild TAO's ResNet ({error})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DataError(
            f"{source}: TAO ResNet weights do not fit TAO's network (missing "
            f"{', '.join(result.missing_keys[:3]) or '-'}; unexpected "
            f"{', '.join(result.unexpected_keys[:3]) or '-'})"
        )
    trained_config = OmegaConf.merge(
        settings,
        {"model": {"backbone": name, "feat_dim": feat_dim, "neck": neck}, "dataset": {"num_classes": num_classes}},
    )
    known = name if TAO_RESNET_LAYERS.get(name) == layers else "no TAO name"
    log.info(
        "%s: TAO ResNet checkpoint (%s: Bottleneck blocks %s, %d-d features, %d classes, neck %r); "
        "neck_feat=%s, last_stride=%d, input %dx%d and pixel mean/std from %s",
        source,
        known,
        list(layers),
        feat_dim,
        num_classes,
        neck,
        settings.model.neck_feat,
        settings.model.last_stride,
        settings.model.input_height,
        settings.model.input_width,
        origin,
    )
    return TrainedModel(model, preprocessing_for(settings), trained_config)


def _rebuild_tao_swin(checkpoint: CheckpointFile, config: DictConfig | None) -> TrainedModel:
    raise DataError(
        f"{checkpoint.source} is a TAO Swin checkpoint; reid_tao rebuilds TAO's ResNet networks only. "
        "Fine-tune from it with model.pretrain_choice=self and model.pretrained_model_path"
    )


class Architecture(NamedTuple):
    detect: Callable[[CheckpointFile], bool]  # is a checkpoint of this architecture?
    rebuild: Callable[[CheckpointFile, DictConfig | None], TrainedModel]


def _tao_with(key: str) -> Callable[[CheckpointFile], bool]:
    """A TAO checkpoint whose network has ``key`` (a name in its model_state)."""
    return lambda checkpoint: checkpoint.kind == TAO and key in checkpoint.model_state


# Trained-model architectures, tried in order: reid_tao's own checkpoints, then TAO's by their key layout.
ARCHITECTURES = {
    "reid_tao": Architecture(lambda checkpoint: checkpoint.kind == REID_TAO, _rebuild_reid_tao),
    "tao_resnet": Architecture(_tao_with("base.conv1.weight"), _rebuild_tao_resnet),
    "tao_swin": Architecture(_tao_with("base.patch_embed.projection.weight"), _rebuild_tao_swin),
}


def trained_num_classes(path: str, field: str, trust: bool = False) -> int:
    checkpoint = read_checkpoint_file(path, field, trust=trust).require_reid_tao()
    return _stored_num_classes(_stored_metadata(checkpoint), checkpoint)


# model.* fields that decide the network or its input: a checkpoint's model is rebuilt from its own values of
# these (evaluate, inference, export, an adaptation source), and training resumes only when the spec agrees.
ARCHITECTURE_FIELDS = (
    "backbone",
    "last_stride",
    "input_width",
    "input_height",
    "neck",
    "feat_dim",
    "neck_feat",
    "gem_pooling",
    "reduce_feat_dim",
)
# dataset.* fields of the preprocessing a trained model expects (its checkpoint stores them)
PREPROCESSING_FIELDS = ("pixel_mean", "pixel_std", "interpolation")


# At evaluate/inference/export time the checkpoint's ARCHITECTURE_FIELDS run; the spec's other model.* fields
# are training settings, except these two read from the spec:
SPEC_MODEL_FIELDS = ("with_flip_feature", "trust_weights_file")


def checkpoint_model_config(config: DictConfig, trained: DictConfig, task: str) -> DictConfig:
    """The spec with the model section that really runs: the checkpoint's (``trained``), but SPEC_MODEL_FIELDS
    from the spec; one line names the ARCHITECTURE_FIELDS values of the spec that differ from the checkpoint's."""
    spec, ran = config.model, trained.model
    differ = [name for name in ARCHITECTURE_FIELDS if spec[name] != ran[name]]
    if differ:
        log.warning(
            "%s: the checkpoint decides the model: %s in the spec differ from the checkpoint's %s; "
            "running the checkpoint's (experiment.yaml records it)",
            task,
            ", ".join(f"model.{name}={spec[name]!r}" for name in differ),
            ", ".join(repr(ran[name]) for name in differ),
        )
    model = OmegaConf.to_container(ran, resolve=True)
    model.update({name: spec[name] for name in SPEC_MODEL_FIELDS})
    return OmegaConf.merge(config, {"model": model})


def _fields_text(section: DictConfig, names, prefix: str = "model") -> str:
    return ", ".join(f"{prefix}.{name}={section[name]}" for name in names)


def check_resumable(path: str, field: str, config: DictConfig, num_classes: int, trust: bool = False) -> None:
    """Training resumes from ``path`` only with the model it holds (every ARCHITECTURE_FIELDS value the
    checkpoint records), its optimiser state and the same identities; else one line saying what to set."""
    checkpoint = read_checkpoint_file(path, field, trust=trust).require_reid_tao()
    metadata = _stored_metadata(checkpoint)
    trained = stored_training_config(metadata, checkpoint.source)
    differ = [name for name in ARCHITECTURE_FIELDS if trained.model[name] != config.model[name]]
    if differ:
        held = f"a {trained.model.backbone} model" if "backbone" in differ else "a model"
        raise DataError(
            f"cannot resume from {path}: it holds {held} with {_fields_text(trained.model, differ)} "
            f"but the spec asks for {_fields_text(config.model, differ)}; set "
            f"{'those' if len(differ) > 1 else 'it'} back to resume, or use a new results_dir to "
            "train the new model"
        )
    if not checkpoint.holds_optimiser_state:
        raise DataError(
            f"cannot resume from {path}: it holds the weights only (reid_tao keeps the optimiser state "
            f"in {LATEST_NAME}.pth); resume from {LATEST_NAME}.pth, or start a new run from this one "
            f"with model.pretrain_choice=self model.pretrained_model_path={path}"
        )
    trained_classes = _stored_num_classes(metadata, checkpoint)
    if trained_classes != num_classes:
        now = f"dataset.train_dataset_dir has {num_classes}"
        if config.adaptation.enable:  # the classifier is the source stream's (1 unused row without one)
            now = (
                f"adaptation.source_dataset_dir has {num_classes}"
                if config.adaptation.source_dataset_dir
                else "source-free adaptation trains none (adaptation.source_dataset_dir is not set)"
            )
        raise DataError(
            f"cannot resume from {path}: it was trained on {trained_classes} identities but {now}; "
            "use a new results_dir or model.pretrain_choice=self to start from it"
        )


def adaptation_source_config(config: DictConfig) -> DictConfig:
    """adaptation.enable: the spec with the model the source checkpoint holds (its ARCHITECTURE_FIELDS and
    preprocessing), as evaluate runs a checkpoint's own model; one line names what differed from the spec.
    A TAO checkpoint or plain weights file decides nothing here (its backbone is checked when it is loaded)."""
    field, path = "adaptation.source_checkpoint", config.adaptation.source_checkpoint
    checkpoint = read_checkpoint_file(path, field, trust=config.model.trust_weights_file)
    if checkpoint.kind != REID_TAO:
        return config
    trained = stored_training_config(_stored_metadata(checkpoint), checkpoint.source)
    differ = [f"model.{name}" for name in ARCHITECTURE_FIELDS if trained.model[name] != config.model[name]]
    differ += [f"dataset.{name}" for name in PREPROCESSING_FIELDS if trained.dataset[name] != config.dataset[name]]
    if not differ:
        return config
    spec_values = ", ".join(f"{name}={OmegaConf.select(config, name)}" for name in differ)
    source_values = ", ".join(f"{OmegaConf.select(trained, name)}" for name in differ)
    log.warning(
        "adaptation.source_checkpoint decides the model: %s in the spec differ from the source's %s; "
        "adapting the source's model (experiment.yaml records it)",
        spec_values,
        source_values,
    )
    return OmegaConf.merge(
        config,
        {
            "model": {name: trained.model[name] for name in ARCHITECTURE_FIELDS},
            "dataset": {
                name: OmegaConf.to_container(trained.dataset, resolve=True)[name] for name in PREPROCESSING_FIELDS
            },
        },
    )


def resume_path(config: DictConfig, results_dir: Path) -> str | None:
    explicit = config.train.resume_training_checkpoint_path
    if explicit:
        return explicit
    latest = Path(results_dir) / "reid_model_latest.pth"
    return str(latest) if latest.is_file() else None
