"""tune.space: the search space of `reid tune`, written in the spec and checked like every other field.

    tune:
      space:
        train.optim.weight_decay: {log: [1.0e-4, 3.0e-2]}   # log-uniform float
        dataset.re_prob: {range: [0.0, 0.6]}                # uniform float
        train.num_epochs: {int: [12, 20]}                   # uniform integer
        model.backbone: {choice: [resnet_18, resnet_34]}    # one of the values

Each key is a spec field (a leaf of the schema) that changes training; each value names one kind.
Whether the ends of a range are valid values of their field is checked where the field's own rules
live (the tune task builds a config at each end).
"""
import math
from typing import Any, List, Mapping, NamedTuple, Tuple

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .catalog import spec_fields
from .loader import closest_hint

KINDS = ("log", "range", "int", "choice")
# Fields a trial must not choose: where results and data go, and sections that do not train.
FIXED_PREFIXES = ("tune.", "evaluate.", "inference.", "export.", "wandb.")
FIXED_FIELDS = ("results_dir", "train.results_dir", "train.resume_training_checkpoint_path",
                "dataset.train_dataset_dir", "dataset.query_dataset_dir", "dataset.test_dataset_dir")
FORM = "give one of {log: [low, high]}, {range: [low, high]}, {int: [low, high]}, {choice: [a, b, ...]}"


class Param(NamedTuple):
    path: str  # the spec field, e.g. train.optim.weight_decay
    kind: str  # one of KINDS
    values: Tuple[Any, ...]  # (low, high) for log/range/int, the options for choice: each a valid field value


def _number_pair(field: str, kind: str, values: Any, integer: bool) -> Tuple[Any, Any]:
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
        raise ConfigError(f"{field}: log needs 0 < low < high, got {values!r}; use range for a scale that "
                          "includes 0")
    return low, high


def parse_space(space: Mapping) -> List[Param]:
    """tune.space -> Params, one line (naming tune.space.<field>) for anything wrong."""
    if not space:
        raise ConfigError("tune.space is empty; give the spec fields to search, e.g. tune.space: "
                          "{train.optim.weight_decay: {log: [1.0e-4, 3.0e-2]}}")
    leaves = [found.path for found in spec_fields()]
    params = []
    for path, spec in space.items():
        field = f"tune.space.{path}"
        if path not in leaves:
            raise ConfigError(f"{field}: {path} is not a spec field{closest_hint(path, leaves)}")
        if path in FIXED_FIELDS or path.startswith(FIXED_PREFIXES):
            raise ConfigError(f"{field}: {path} cannot be searched (trials fix the folders and the tune, evaluate, "
                              "inference, export and wandb sections); choose a field that changes training")
        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec)
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"{field}: {FORM}; got {spec!r}")
        kind, values = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{field}: choice needs a non-empty list of values, got {values!r}")
            params.append(Param(path, kind, tuple(values)))
        else:
            params.append(Param(path, kind, _number_pair(field, kind, values, integer=kind == "int")))
    return params
