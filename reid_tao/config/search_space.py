"""tune.space: the search space of `reid tune`, written in the spec and checked like every other field.

    tune:
      space:
        train.optim.weight_decay: {log: [1.0e-4, 3.0e-2]}   # log-uniform float
        dataset.re_prob: {range: [0.0, 0.6]}                # uniform float
        train.num_epochs: {int: [12, 20]}                   # uniform integer
        model.backbone: {choice: [resnet_18, resnet_34]}    # one of the values

Each key is a spec field (a leaf of the schema) that changes training; each value names one kind.
Whether the ends of a range are valid values of their field is checked where the field's own rules
live (the tune task builds a config at each end). An empty tune.space searches DEFAULT_SPACE.
"""

import dataclasses
import functools
import math
import textwrap
import typing
from collections.abc import Mapping
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from reid_tao.config.catalog import spec_fields
from reid_tao.config.loader import closest_hint
from reid_tao.config.schema import ExperimentConfig
from reid_tao.errors import ConfigError

KINDS = ("log", "range", "int", "choice")
# Fields a trial must not choose: where results and data go, and sections that do not train.
FIXED_PREFIXES = ("tune.", "evaluate.", "inference.", "export.", "wandb.")
FIXED_FIELDS = (
    "results_dir",
    "train.results_dir",
    "train.resume_training_checkpoint_path",
    "dataset.train_dataset_dir",
    "dataset.query_dataset_dir",
    "dataset.test_dataset_dir",
)
FORM = "give one of {log: [low, high]}, {range: [low, high]}, {int: [low, high]}, {choice: [a, b, ...]}"
CHOICE_TYPES = (str, int, float, bool, type(None))  # what Optuna stores as a categorical value

# tune.space when the spec gives none (docs/tune.md): the recipe's own knobs, on ranges that hold the values the
# Market studies of docs/results.md tried (weight decay moved validation mAP most, then the lr, then random
# erasing; BoT's 5e-4 / 3.5e-4 and the CPU recipe's 4e-3 / 1e-3 lie inside). The lr range fits Adam, the
# schema's optimiser. The tune task leaves out what the spec does not train with and fits the warm-up to it.
DEFAULT_SPACE: dict[str, dict[str, list]] = {
    "train.optim.base_lr": {"log": [1.0e-4, 4.0e-3]},
    "train.optim.weight_decay": {"log": [1.0e-4, 3.2e-2]},
    "dataset.re_prob": {"range": [0.0, 0.6]},
    "train.optim.triplet_loss_margin": {"range": [0.1, 0.5]},
    "model.label_smooth": {"choice": [True, False]},
    "train.optim.warmup_epochs": {"int": [0, 10]},
}
DEFAULT_SPACE_RULES = (
    "the triplet margin only with a triplet loss that has a margin, label smoothing only with the identity loss; "
    "the warm-up field is the one train.optim.warmup_method reads (warmup_epochs for cosine, warmup_iters for "
    "linear and constant), at most half of train.num_epochs"
)


def space_text(space: Mapping[str, Mapping[str, list]], indent: str = "  ") -> str:
    """One "field: {kind: [a, b]}" line per entry (the YAML a spec would hold)."""

    def shown(value):
        return str(value).lower() if isinstance(value, bool) else repr(value)

    return "\n".join(
        f"{indent}{path}: {{{kind}: [{', '.join(shown(v) for v in values)}]}}"
        for path, spec in space.items()
        for kind, values in spec.items()
    )


def default_space_help() -> str:
    """The default space as `reid tune --help` shows it."""
    return (
        "default search space (when tune.space is empty; an explicit tune.space is searched as written):\n"
        f"{space_text(DEFAULT_SPACE)}\n"
        + textwrap.fill(f"Left out or fitted to the spec: {DEFAULT_SPACE_RULES}.", width=100)
    )


class Param(NamedTuple):
    path: str  # the spec field, e.g. train.optim.weight_decay
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # (low, high) for log/range/int, the options for choice: each a valid field value


def _number_pair(field: str, kind: str, values: Any, integer: bool) -> tuple[Any, Any]:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise ConfigError(f"{field}: {kind} needs [low, high], got {values!r}")
    try:
        low, high = (int(v) if integer else float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}: {kind} needs two {'integers' if integer else 'numbers'}, got {values!r}") from None
    if integer and any(float(v) != int(v) for v in (low, high)):
        raise ConfigError(f"{field}: int needs two integers, got {values!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{field}: {kind} needs low < high, got {values!r}")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{field}: log needs 0 < low < high, got {values!r}; use range for a scale that includes 0")
    return low, high


@functools.lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    """spec field -> its declared type (Optional unwrapped): int, float, bool, str, a list or dict type."""
    types = {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            kind = hints[item.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{item.name}.")
                continue
            args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
            types[f"{prefix}{item.name}"] = (
                args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
            )

    walk(ExperimentConfig, "")
    return types


def _check_kind(field: str, path: str, kind: str) -> None:
    """A range or log range draws fractions: only for float fields; int ranges only for numbers; lists and
    mappings are no single value to draw."""
    declared = _field_types().get(path)
    if typing.get_origin(declared) in (list, dict) or declared in (list, dict):
        raise ConfigError(
            f"{field}: {path} holds a list or mapping, which tune.space cannot search; fix it in the "
            "spec and search single-valued fields"
        )
    if kind in ("log", "range") and declared is not float:
        hint = "use {int: [low, high]}" if declared is int else "use {choice: [...]}"
        raise ConfigError(
            f"{field}: {kind} draws fractional numbers, and {path} takes "
            f"{getattr(declared, '__name__', declared)} values; {hint}"
        )
    if kind == "int" and declared not in (int, float):
        raise ConfigError(
            f"{field}: int draws whole numbers, and {path} takes "
            f"{getattr(declared, '__name__', declared)} values; use {{choice: [...]}}"
        )


def parse_space(space: Mapping) -> list[Param]:
    """tune.space -> Params, one line (naming tune.space.<field>) for anything wrong."""
    if not space:
        raise ConfigError(
            "tune.space is empty; give the spec fields to search, e.g. tune.space: "
            "{train.optim.weight_decay: {log: [1.0e-4, 3.0e-2]}}"
        )
    leaves = [found.path for found in spec_fields()]
    params = []
    for path, spec in space.items():
        field = f"tune.space.{path}"
        if path not in leaves:
            raise ConfigError(f"{field}: {path} is not a spec field{closest_hint(path, leaves)}")
        if path in FIXED_FIELDS or path.startswith(FIXED_PREFIXES):
            raise ConfigError(
                f"{field}: {path} cannot be searched (trials fix the folders and the tune, evaluate, "
                "inference, export and wandb sections); choose a field that changes training"
            )
        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec)
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"{field}: {FORM}; got {spec!r}")
        kind, values = next(iter(spec.items()))
        _check_kind(field, path, kind)
        if kind == "choice":
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{field}: choice needs a non-empty list of values, got {values!r}")
            nested = next((value for value in values if not isinstance(value, CHOICE_TYPES)), None)
            if nested is not None:
                raise ConfigError(
                    f"{field}: each choice must be a single value (a number, a string, true/false "
                    f"or null), got {nested!r}; lists and mappings cannot be choices"
                )
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"{field}: choice lists a value twice: {values!r}")
            params.append(Param(path, kind, tuple(values)))
        else:
            params.append(Param(path, kind, _number_pair(field, kind, values, integer=kind == "int")))
    return params
