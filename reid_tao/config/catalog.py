"""The schema's fields read back with their rules (declared with :func:`~reid_tao.config.fields.spec_field`):
a walk over every leaf, and the texts derived from them (``reid TASK --help``, docs/spec_fields.md)."""

import dataclasses
import difflib
import textwrap
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from reid_tao.config.fields import META_KEY, STATUSES, Choices, FieldMeta
from reid_tao.config.schema import ExperimentConfig
from reid_tao.errors import ConfigError

NO_RULES = FieldMeta(help="")
Resolve = Callable[[Choices], tuple[Any, ...]]  # choices -> values (build.resolve_choices reads the tables)


class SpecField(NamedTuple):
    path: str  # "train.optim.base_lr"
    default: Any
    meta: FieldMeta


def spec_fields(root=None, prefix: str = "") -> Iterator[SpecField]:
    """Every leaf field of the schema (or of the dataclass ``root``), depth first in declaration order."""
    root = ExperimentConfig if root is None else root
    for item in dataclasses.fields(root):
        if item.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(item.default_factory):
            yield from spec_fields(item.default_factory, f"{prefix}{item.name}.")
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        # a field declared without spec_field has no rules and no help (a test asks for help on every field)
        yield SpecField(f"{prefix}{item.name}", default, item.metadata.get(META_KEY, NO_RULES))


def find_field(path: str) -> SpecField:
    """The field at ``path`` ("train.optim.base_lr"); KeyError for a path that is no field."""
    for found in spec_fields():
        if found.path == path:
            return found
    raise KeyError(path)


def literal_choices(choices: Choices | None) -> tuple[Any, ...] | None:
    """The choices when they are written out (not a table name), else None."""
    return None if choices is None or isinstance(choices, str) else tuple(choices)


def choices_text(values) -> str:
    return ", ".join(repr(value) for value in values if value is not None)


def closest_hint(key: str, candidates: Iterable[str]) -> str:
    """ "; did you mean X?" for the closest candidate, or "" when none is close."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


def check_choice_in(found: SpecField, value, allowed) -> None:
    """One ConfigError line unless ``value`` is one of ``allowed`` (None passes where None is the default)."""
    if value is None and found.default is None:
        return
    if value not in allowed:
        raise ConfigError(
            f"{found.path}={value!r} is not supported{found.meta.hint}; choose one of "
            f"{choices_text(allowed)}"
            f"{closest_hint(str(value), [str(name) for name in allowed if name is not None])}"
        )


def allowed_text(meta: FieldMeta, resolve: Resolve) -> str:
    """The allowed values in words, e.g. "one of 'epoch', 'step'" or "at least 1"; "" when anything goes."""
    if meta.choices is not None:
        renamed = ", ".join(f"{old!r} = {new!r}" for old, new in meta.renamed)
        return f"one of {choices_text(resolve(meta.choices))}" + (f" (old names: {renamed})" if renamed else "")
    return meta.bounds.text() if meta.bounds is not None else ""


def _shown(value) -> str:
    return repr(value)


TOP_LEVEL = "top"  # what `reid TASK --help top` calls the fields outside any section (results_dir, ...)


def _group(path: str) -> str:
    """The section a field is listed under: "train.optim" for train.optim.base_lr, TOP_LEVEL for results_dir."""
    return path.rpartition(".")[0] or TOP_LEVEL


def task_fields(sections) -> Iterator[SpecField]:
    """The top-level fields and those of ``sections`` (a task's), in declaration order."""
    wanted = tuple(f"{section}." for section in sections)
    return (found for found in spec_fields() if "." not in found.path or found.path.startswith(wanted))


def help_groups(sections) -> tuple[str, ...]:
    """The groups `reid TASK --help GROUP` accepts for a task's ``sections``, in declaration order."""
    return tuple(dict.fromkeys(_group(found.path) for found in task_fields(sections)))


def describe_sections(sections, width: int = 100) -> str:
    """The short `reid TASK --help`: each group of fields with the names of the fields that act, wrapped to
    ``width`` (TAO's fields without effect are counted, and listed by `reid TASK --help GROUP`)."""
    groups: dict = {}
    for found in task_fields(sections):
        names, idle = groups.setdefault(_group(found.path), ([], []))
        (names if found.meta.status == "active" else idle).append(found.path.rpartition(".")[2])
    pad = max(len(group) for group in groups) + 4
    lines = []
    for group, (names, idle) in groups.items():
        text = ", ".join(names) + (f" (+ {len(idle)} of TAO's without effect)" if idle else "")
        lines.append(
            textwrap.fill(
                text, width, initial_indent=f"  {group:<{pad - 2}}", subsequent_indent=" " * pad, break_on_hyphens=False
            )
        )
    return "\n".join(lines)


def describe_fields(sections, resolve: Resolve, width: int | None = None, group: str | None = None) -> str:
    """Text for ``reid TASK --help [GROUP]``: the top-level fields and those of ``sections`` (only ``group``'s and
    its subsections' when given), each as "  path = default  [allowed] (status)" and its help on the next lines,
    wrapped to ``width`` (None: not wrapped)."""
    lines = []
    for found in task_fields(sections):
        if group is not None and not (_group(found.path) == group or found.path.startswith(f"{group}.")):
            continue
        meta = found.meta
        notes = [allowed_text(meta, resolve)]
        if meta.status != "active":
            notes.append(STATUSES[meta.status])
        note = "; ".join(note for note in notes if note)
        head = f"  {found.path} = {_shown(found.default)}" + (f"  [{note}]" if note else "")
        text = f"      {_help_line(meta)}"
        if width is None:
            lines += [head, text]
        else:
            lines.append(textwrap.fill(head, width, subsequent_indent=" " * 8, break_on_hyphens=False))
            lines.append(textwrap.fill(text, width, subsequent_indent=" " * 6, break_on_hyphens=False))
    return "\n".join(lines)


def _help_line(meta: FieldMeta) -> str:
    text = meta.help
    if meta.why:
        text += f" ({STATUSES[meta.status]}: {meta.why}{'; ' + meta.instead if meta.instead else ''})"
    return ("new: " if meta.new else "") + text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "\\<")


def markdown_table(resolve: Resolve) -> str:
    """docs/spec_fields.md: one table per section; ``resolve`` turns a table name into its choices."""
    out = [
        "# Spec fields",
        "",
        "Generated from the schema's field metadata (reid_tao/config/schema.py) by "
        "`python scripts/gen_spec_fields.py`; do not edit by hand. "
        "Names and defaults are TAO's; fields marked *(new)* are reid_tao's. Status: *active*, *no effect* "
        "(accepted; a non-default value logs one line) or *rejected when changed* (TAO declares the field but "
        "never uses it).",
        "",
    ]
    section = None
    for found in spec_fields():
        head = found.path.split(".")[0] if "." in found.path else "top level"
        if head != section:
            section = head
            out += [
                "",
                f"## {section}",
                "",
                "| field | default | allowed | status | what it does |",
                "| --- | --- | --- | --- | --- |",
            ]
        meta = found.meta
        name = f"`{found.path}`" + (" *(new)*" if meta.new else "")
        what = meta.help + (f" ({meta.why}{'; ' + meta.instead if meta.instead else ''})" if meta.why else "")
        out.append(
            f"| {name} | `{_shown(found.default)}` | {_cell(allowed_text(meta, resolve))} | "
            f"{STATUSES[meta.status]} | {_cell(what)} |"
        )
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"
