"""Load a TAO spec file, merge it over the schema, apply Hydra-grammar overrides, validate.

Every problem becomes a one-line ``ConfigError`` naming the field and the file.
"""
import difflib
from pathlib import Path
from typing import Any, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from ..io import first_line
from .schema import ExperimentConfig
from .validate import validate_config

# Field names that TAO's documentation spells differently in different places.
ALIASES = {
    "train.optim.steps": "train.optim.lr_steps",
    "train.clip_grad_norm": "train.grad_clip",
}

TASKS = ("train", "evaluate", "inference", "export", "crops")


def schema_config() -> DictConfig:
    """The structured default config (struct mode: unknown keys are errors)."""
    return OmegaConf.structured(ExperimentConfig)


def closest_hint(key: str, candidates: Iterable[str]) -> str:
    """"; did you mean X?" for the closest candidate, or "" when none is close."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


def _check_known_keys(schema: DictConfig, spec: Any, prefix: str, source: str) -> None:
    """Reject keys that the schema does not have, suggesting the closest field."""
    if not isinstance(spec, dict):
        return
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if key not in schema:
            siblings = [f"{prefix}{name}" for name in schema.keys()]
            raise ConfigError(f"unknown field {path} in {source}{closest_hint(path, siblings)}")
        child = schema[key]
        if isinstance(child, DictConfig):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path} in {source} must be a section (mapping), got {value!r}")
            _check_known_keys(child, value, f"{path}.", source)


def _unset_mandatory_markers(schema: DictConfig, spec: Any, prefix: str, source: str) -> None:
    """TAO 7.3 writes `???` (OmegaConf's "mandatory") for evaluate/inference.checkpoint in experiment.yaml:
    read it as "not set" where the field may be unset, so the task's own fallback applies."""
    if not isinstance(spec, dict):
        return
    for key, value in spec.items():
        child = schema[key]
        if isinstance(child, DictConfig):
            _unset_mandatory_markers(child, value, f"{prefix}{key}.", source)
        elif value == "???":
            if schema._get_node(key)._is_optional():
                spec[key] = None
            else:
                raise ConfigError(f"{prefix}{key} is `???` (not filled in) in {source}; set a value")


def _apply_aliases(spec: dict, source: str) -> None:
    for alias, target in ALIASES.items():
        *parents, leaf = alias.split(".")
        node = spec
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        target_leaf = target.split(".")[-1]
        if target_leaf in node and node[target_leaf] != node[leaf]:
            raise ConfigError(f"{alias} and {target} are the same field with different values in {source}; keep one")
        node[target_leaf] = node.pop(leaf)


def _validation_message(error: OmegaConfBaseException, source: str) -> str:
    key = getattr(error, "full_key", None) or "?"
    msg = first_line(str(getattr(error, "msg", error)))
    return f"invalid value for {key} in {source}: {msg}"


def _read_spec(spec_path: str) -> dict:
    path = Path(spec_path)
    if not path.is_file():
        raise ConfigError(f"spec file {spec_path} does not exist; pass an existing YAML file with -e")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml errors come in several types
        raise ConfigError(f"cannot parse spec file {spec_path}: {first_line(error)}") from None
    container = OmegaConf.to_container(loaded, resolve=False) if loaded is not None else {}
    if container is None:
        return {}
    if not isinstance(container, dict):
        raise ConfigError(f"spec file {spec_path} must contain a mapping of sections (model:, dataset:, ...)")
    return container


def _parse_overrides(overrides: List[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as error:
            raise ConfigError(f"cannot parse override '{text}': {first_line(error)}; write section.key=value") from None
        if override.is_delete() or override.is_add() or override.is_force_add() or override.is_sweep_override():
            raise ConfigError(f"override '{text}' is not supported: only section.key=value overrides are")
        parsed.append((text, override.key_or_group, override.value()))
    return parsed


def load_config(spec_path: Optional[str], overrides: List[str] = ()) -> DictConfig:
    """Spec file (optional) + overrides -> resolved, validated config (read-only struct DictConfig)."""
    config = schema_config()
    source = spec_path or "the defaults"
    if spec_path:
        spec = _read_spec(spec_path)
        _apply_aliases(spec, spec_path)
        _check_known_keys(config, spec, "", spec_path)
        _unset_mandatory_markers(config, spec, "", spec_path)
        try:
            config = OmegaConf.merge(config, spec)
        except OmegaConfBaseException as error:
            raise ConfigError(_validation_message(error, spec_path)) from None

    for text, key, value in _parse_overrides(list(overrides)):
        key = ALIASES.get(key, key)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(config, parent_key) if parent_key else config
        if not isinstance(parent, DictConfig) or leaf not in parent:
            candidates = _all_keys(config)
            raise ConfigError(f"unknown field {key} in override '{text}'{closest_hint(key, candidates)}")
        try:
            OmegaConf.update(config, key, value, merge=True)
        except OmegaConfBaseException as error:
            raise ConfigError(_validation_message(error, f"override '{text}'")) from None

    try:
        OmegaConf.resolve(config)
    except OmegaConfBaseException as error:
        raise ConfigError(_validation_message(error, source)) from None
    validate_config(config)
    OmegaConf.set_readonly(config, True)
    return config


def _all_keys(config: DictConfig, prefix: str = "") -> List[str]:
    keys = []
    for key, value in config.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, f"{prefix}{key}."))
    return keys


def describe_fields(sections: Iterable[str]) -> str:
    """Text listing of the top-level fields and every field of `sections`, for ``reid <task> --help``."""
    config = schema_config()
    wanted = tuple(sections)
    lines = []
    for key in _all_keys(config):
        if "." in key and not key.startswith(tuple(f"{section}." for section in wanted)):
            continue
        value = OmegaConf.select(config, key)
        if isinstance(value, DictConfig):
            continue
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        lines.append(f"  {key} = {shown!r}")
    return "\n".join(lines)


def task_results_dir(config: DictConfig, task: str) -> Path:
    """results_dir/<task> unless <task>.results_dir is set."""
    own = config[task].results_dir
    return Path(own) if own else Path(config.results_dir) / task
