"""Spec fields describe themselves: every rule (help, choices, bounds, status) is declared once in the schema's
field metadata, and validation, check_spec, notices, `reid TASK --help` and docs/spec_fields.md derive from it."""

import importlib
import re
from pathlib import Path

import pytest

from reid_tao.builders import load_experiment, resolve_choices, spec_fields_markdown
from reid_tao.cli import main
from reid_tao.config.catalog import find_field, spec_fields
from reid_tao.config.notices import field_notices
from reid_tao.errors import ConfigError

PAGE = Path(__file__).resolve().parent.parent / "docs" / "spec_fields.md"
TABLES = Path(__file__).resolve().parent.parent / "reid_tao" / "config" / "table_choices.py"
FIELDS = list(spec_fields())


def _other_value(default):
    """A value of the same type as ``default`` that differs from it (for an override)."""
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, (int, float)):
        return str(default + 1)
    if isinstance(default, list):
        return "[" + ",".join(str(item + 1) for item in default) + "]"
    return "'some_other_value'"


def _outside(bounds):
    """An override value just outside ``bounds`` (not its special value)."""
    if bounds.low is not None:
        value = bounds.low if bounds.low_open else bounds.low - 1
        if bounds.special is not None and value == bounds.special[0]:
            value -= 1
        return value
    return bounds.high + 1


def test_every_schema_leaf_has_help():
    assert len(FIELDS) > 140
    missing = [found.path for found in FIELDS if not found.meta.help.strip()]
    assert not missing, f"fields without spec_field(help=...): {missing}"


@pytest.mark.parametrize("path", [f.path for f in FIELDS if f.meta.status == "unsupported"])
def test_unsupported_fields_are_rejected_when_changed(path):
    load_experiment(None)  # the default value is accepted
    with pytest.raises(
        ConfigError,
        match=rf"^{path} is not supported \(TAO declares it but never uses it\); "
        "remove it from the spec",
    ):
        load_experiment(None, [f"{path}={_other_value(find_field(path).default)}"])


@pytest.mark.parametrize("path", [f.path for f in FIELDS if f.meta.status == "inert"])
def test_inert_fields_are_noticed_for_their_task_only(path):
    found = find_field(path)
    config = load_experiment(None, [f"{path}={_other_value(found.default)}"])
    task = path.split(".")[0] if "." in path else "train"
    lines = field_notices(config, task)
    assert len(lines) == 1 and lines[0].startswith(f"{path}=") and lines[0].endswith(f"has no effect: {found.meta.why}")
    others = [other for other in ("train", "evaluate", "inference", "export") if other != task]
    if "." in path:
        assert not any(field_notices(config, other) for other in others)
    assert field_notices(load_experiment(None), task) == []  # defaults: no notice


TABLE_FIELDS = [f for f in FIELDS if isinstance(f.meta.choices, str)]


@pytest.mark.parametrize("found", TABLE_FIELDS, ids=[f.path for f in TABLE_FIELDS])
def test_table_backed_choices_are_the_tables_keys_and_are_checked(found):
    module, _, name = found.meta.choices.partition(":")
    table = getattr(importlib.import_module(module), name)
    table = table() if callable(table) else table  # a derived table (metric names from the loss terms)
    assert resolve_choices(found.meta.choices) == tuple(table)
    assert found.default is None or found.default in table  # TAO's default is one of the choices
    with pytest.raises(ConfigError, match=rf"^{found.path}='no_such_choice' is not supported.*; choose one of "):
        load_experiment(None, [f"{found.path}=no_such_choice"])


def test_backbone_choices_follow_the_backbone_table():
    from reid_tao.model.backbones import BACKBONES

    assert resolve_choices(find_field("model.backbone").meta.choices) == tuple(BACKBONES)


BOUNDED = [f for f in FIELDS if f.meta.bounds is not None]


@pytest.mark.parametrize("found", BOUNDED, ids=[f.path for f in BOUNDED])
def test_bounds_reject_a_value_just_outside(found):
    value = _outside(found.meta.bounds)
    override = f"[{','.join([str(value)] * len(found.default))}]" if isinstance(found.default, list) else str(value)
    rule = re.escape(found.meta.bounds.text())
    with pytest.raises(ConfigError, match=rf"^{re.escape(found.path)}( values)? must be {rule}, got "):
        load_experiment(None, [f"{found.path}={override}"])


def test_messages_keep_their_shape():
    with pytest.raises(ConfigError, match=r"^train.num_epochs must be at least 1, got 0$"):
        load_experiment(None, ["train.num_epochs=0"])
    with pytest.raises(
        ConfigError,
        match=r"^model.backbone='resnet50' is not supported; choose one of 'resnet_18'"
        r".*; did you mean resnet_50\?$",
    ):
        load_experiment(None, ["model.backbone=resnet50"])
    with pytest.raises(ConfigError, match=r"^evaluate.batch_size must be at least 1, or -1 \(dataset.val_batch_size\)"):
        load_experiment(None, ["evaluate.batch_size=-2"])
    with pytest.raises(ConfigError, match=r"^model.drop_out is not supported .*; use model.dropout_rate$"):
        load_experiment(None, ["model.drop_out=0.1"])
    assert load_experiment(None, ["train.checkpointer.monitor=mAP", "train.checkpointer.mode=max"])


def test_task_help_shows_choices_bounds_status_and_help(capsys):
    assert main(["train", "--help", "all"]) == 0
    out = capsys.readouterr().out
    assert "model.backbone = 'resnet_50'  [one of 'resnet_18', 'resnet_34'" in out
    assert "train.num_epochs = 10  [at least 1]" in out
    assert "model.jpm = False  [rejected when changed]" in out
    assert "train.optim.cosine_scale = 30.0  [no effect]" in out
    assert "      stride of the last ResNet stage" in out  # the help line under model.last_stride


def test_spec_fields_page_is_current(production_tables):
    assert PAGE.read_text() == spec_fields_markdown(), (
        "docs/spec_fields.md is stale; regenerate it with: python scripts/gen_spec_fields.py"
    )


def test_the_table_choices_that_help_shows_are_current(production_tables):
    from reid_tao.builders import table_choices_module

    assert TABLES.read_text() == table_choices_module(), (
        "reid_tao/config/table_choices.py is stale; regenerate it with: python scripts/gen_spec_fields.py"
    )
