"""Load a TAO spec file, merge it over the schema, apply Hydra-grammar overrides, validate.

Every problem becomes a one-line ``ConfigError`` naming the field and the file.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reid_tao.config.catalog import closest_hint, spec_fields
from reid_tao.config.schema import ExperimentConfig
from reid_tao.config.validate import validate_config
from reid_tao.errors import ConfigError, DataError, first_line

# Field names that TAO's documentation spells differently in different places.
ALIASES = {
    "train.optim.steps": "train.optim.lr_steps",
    "train.clip_grad_norm": "train.grad_clip",
}

TASKS = ("train", "evaluate", "inference", "export", "tune", "crops")


def schema_config() -> DictConfig:
    """The structured default config (struct mode: unknown keys are errors)."""
    return OmegaConf.structured(ExperimentConfig)


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
            if _is_section(child):  # a free-form mapping (e.g. tune.space) has keys of its own
                _check_known_keys(child, value, f"{path}.", source)


def _is_section(node: DictConfig) -> bool:
    """A schema section (a dataclass), not a free-form Dict field."""
    return OmegaConf.get_type(node) not in (dict, None)


def _unset_mandatory_markers(schema: DictConfig, spec: Any, prefix: str, source: str) -> None:
    """TAO 7.3 writes `???` (OmegaConf's "mandatory") for evaluate/inference.checkpoint in experiment.yaml:
    read it as "not set" where the field may be unset, so the task's own fallback applies."""
    if not isinstance(spec, dict):
        return
    for key, value in spec.items():
        child = schema[key]
        if isinstance(child, DictConfig):
            if _is_section(child):
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


def rename_old_values(config: DictConfig) -> None:
    """Old values of renamed choices (a field's ``renamed`` metadata, e.g. dataset.pipeline=gpu) replaced by their
    current names, in place, before the config is validated."""
    for found in spec_fields():
        value = OmegaConf.select(config, found.path)
        current = dict(found.meta.renamed).get(value) if isinstance(value, str) else None
        if current is not None:
            OmegaConf.update(config, found.path, current, merge=False)


def _validation_message(error: OmegaConfBaseException, source: str, key: str | None = None) -> str:
    key = key or getattr(error, "full_key", None) or "?"
    msg = first_line(str(getattr(error, "msg", None) or error))
    return f"invalid value for {key} in {source}: {msg}"


# PyYAML contexts that start where the mistake is (an unclosed quote or bracket): the problem is found later
_OPENED_CONTEXTS = (
    "while scanning a quoted scalar",
    "while parsing a flow sequence",
    "while parsing a flow mapping",
    "while scanning a block scalar",
)


def _yaml_problem(error: Exception, text: str | None = None) -> str:
    """PyYAML's error as "line L, column C: problem (context)", 1-based as editors count, at the line of the
    mistake: PyYAML finds a missing ': ' or an unclosed quote or bracket only on a later line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or not problem:
        return first_line(error)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context in _OPENED_CONTEXTS and context_mark is not None and context_mark.line < mark.line:
        return (
            f"line {context_mark.line + 1}, column {context_mark.column + 1}: {problem} at line {mark.line + 1} "
            f"({context} that starts here: is it closed?)"
        )
    start = _plain_scalar_start(text, mark) if text is not None and "mapping values" in problem else None
    if start is not None:
        line = text.splitlines()[start.line].strip()
        return (
            f"line {start.line + 1}, column {start.column + 1}: {line!r} runs on into line {mark.line + 1}, where "
            f"{problem} (a missing ': ' after a key on line {start.line + 1}, or line {mark.line + 1} indented "
            "too deep?)"
        )
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def _plain_scalar_start(text: str, mark):
    """Where the plain value holding ``mark`` starts when it began on an earlier line ("backbone resnet_18" and
    the next line's "feat_dim" read as one value), else None."""
    import yaml

    last = None
    try:
        for token in yaml.scan(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(token, yaml.ScalarToken):
                last = token
    except yaml.YAMLError:
        pass
    return last.start_mark if last is not None and last.plain and last.start_mark.line < mark.line else None


def _unresolvable_field(config: DictConfig) -> str | None:
    """The first field whose interpolation cannot be resolved (OmegaConf.resolve does not say which)."""

    def leaves(node, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for key in leaves(OmegaConf.to_container(config, resolve=False), ""):
        try:
            OmegaConf.select(config, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException:
            return key
    return None


# A spec is a few hundred values; YAML aliases can make a small file expand without bound (a "billion laughs"
# spec) and a huge list takes minutes to merge, so the file and its expanded size are bounded before loading.
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 20_000


def _expanded_size(node, sizes: dict) -> int:
    """Values in a composed YAML node graph once every alias is expanded (aliases share nodes: memoised)."""
    import yaml

    key = id(node)
    if key not in sizes:
        sizes[key] = MAX_SPEC_VALUES + 1  # a node that contains itself expands without end
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
        else:
            size = 1
        sizes[key] = min(size, MAX_SPEC_VALUES + 1)
    return sizes[key]


def _check_spec_size(path: Path, spec_path: str) -> None:
    import yaml

    if path.stat().st_size > MAX_SPEC_BYTES:
        raise ConfigError(
            f"spec file {spec_path} is {path.stat().st_size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes"
        )
    text = None
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception as error:  # yaml and decoding errors come in several types
        raise ConfigError(f"cannot parse spec file {spec_path}: {_yaml_problem(error, text)}") from None
    if root is not None and _expanded_size(root, {}) > MAX_SPEC_VALUES:
        raise ConfigError(
            f"spec file {spec_path} expands to more than {MAX_SPEC_VALUES} values (YAML aliases or "
            "huge lists); a spec holds a few hundred settings, write them out plainly"
        )


def _read_spec(spec_path: str) -> dict:
    path = Path(spec_path)
    if not path.is_file():
        raise ConfigError(f"spec file {spec_path} does not exist; pass an existing YAML file with -e")
    _check_spec_size(path, spec_path)
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml errors come in several types
        raise ConfigError(f"cannot parse spec file {spec_path}: {_yaml_problem(error)}") from None
    container = OmegaConf.to_container(loaded, resolve=False) if loaded is not None else {}
    if container is None:
        return {}
    if not isinstance(container, dict):
        raise ConfigError(f"spec file {spec_path} must contain a mapping of sections (model:, dataset:, ...)")
    return container


def _parse_overrides(overrides: list[str]):
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


def load_config(spec_path: str | None, overrides: list[str] = ()) -> DictConfig:
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
        raise ConfigError(_validation_message(error, source, _unresolvable_field(config))) from None
    rename_old_values(config)
    validate_config(config)
    OmegaConf.set_readonly(config, True)
    return config


def _all_keys(config: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, f"{prefix}{key}."))
    return keys


def task_results_dir(config: DictConfig, task: str) -> Path:
    """results_dir/<task> unless <task>.results_dir is set; neither set (TAO 7.3's experiment.yaml has
    results_dir: '') is an error, as in TAO."""
    own = config[task].results_dir
    if own:
        return Path(own)
    if not config.results_dir:
        raise ConfigError(
            f"results_dir is not set (nor {task}.results_dir); set results_dir to the folder for "
            f"the outputs, e.g. results_dir=/results"
        )
    return Path(config.results_dir) / task


def _plain_data(value, where: str, source: str, budget: list) -> None:
    """Refuse what is not plain data: an interpolation (``${oc.env:SECRET}`` would read this environment),
    non-string keys, other types, and more values than a spec may hold."""
    budget[0] -= 1
    if budget[0] < 0:
        raise DataError(
            f"{source}: its stored config holds more than {MAX_SPEC_VALUES} values; it is not one "
            "that `reid train` wrote"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DataError(f"{source}: its stored config has a non-text key {key!r} under {where or 'the top'}")
            _plain_data(item, f"{where}.{key}" if where else key, source, budget)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _plain_data(item, f"{where}[{index}]", source, budget)
    elif isinstance(value, str):
        if "${" in value:
            raise DataError(
                f"{source}: its stored config has an interpolation at {where} ({value[:60]!r}); stored "
                "configs are data and are never resolved; use a checkpoint written by `reid train`"
            )
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise DataError(f"{source}: its stored config has a {type(value).__name__} at {where}; expected plain values")


def check_stored_data(stored: Any, source: str) -> None:
    """One line (DataError) unless ``stored`` is plain, bounded data without interpolations."""
    _plain_data(stored, "", source, [MAX_SPEC_VALUES])


def load_stored_config(stored: Any, source: str) -> DictConfig:
    """A config stored in a checkpoint (or a TAO checkpoint's hyper-parameters), read as data: never resolved
    against this environment, bounded in size, and checked by the same schema and rules as a spec."""
    if not isinstance(stored, dict):
        raise DataError(f"{source}: its stored config is a {type(stored).__name__}, not a mapping of sections")
    check_stored_data(stored, source)
    try:
        config = OmegaConf.merge(schema_config(), stored)
    except OmegaConfBaseException as error:
        raise DataError(_validation_message(error, f"the config stored in {source}")) from None
    rename_old_values(config)  # a checkpoint written before a value was renamed
    try:
        validate_config(config)
    except ConfigError as error:
        raise DataError(f"{source}: its stored config is invalid: {error}") from None
    OmegaConf.set_readonly(config, True)
    return config
