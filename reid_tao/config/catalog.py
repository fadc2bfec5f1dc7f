"""The schema's fields read back with their rules (declared with :func:`~reid_tao.config.fields.spec_field`):
a walk over every leaf, and the texts derived from them (``reid TASK --help``, docs/spec_fields.md)."""
import dataclasses
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple

from .fields import META_KEY, STATUSES, Choices, FieldMeta
from .schema import ExperimentConfig

NO_RULES = FieldMeta(help="")
Resolve = Callable[[Choices], Tuple[Any, ...]]  # choices -> values (build.resolve_choices reads the tables)


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


def literal_choices(choices: Optional[Choices]) -> Optional[Tuple[Any, ...]]:
    """The choices when they are written out (not a table name), else None."""
    return None if choices is None or isinstance(choices, str) else tuple(choices)


def choices_text(values) -> str:
    return ", ".join(repr(value) for value in values if value is not None)


def allowed_text(meta: FieldMeta, resolve: Resolve) -> str:
    """The allowed values in words, e.g. "one of 'epoch', 'step'" or "at least 1"; "" when anything goes."""
    if meta.choices is not None:
        return f"one of {choices_text(resolve(meta.choices))}"
    return meta.bounds.text() if meta.bounds is not None else ""


def _shown(value) -> str:
    return repr(value)


def describe_fields(sections, resolve: Resolve) -> str:
    """Text for ``reid TASK --help``: the top-level fields and those of ``sections``, each as
    "  path = default  [allowed] (status)" and its help on the next line."""
    wanted = tuple(f"{section}." for section in sections)
    lines = []
    for found in spec_fields():
        if "." in found.path and not found.path.startswith(wanted):
            continue
        meta = found.meta
        notes = [allowed_text(meta, resolve)]
        if meta.status != "active":
            notes.append(STATUSES[meta.status])
        note = "; ".join(note for note in notes if note)
        lines.append(f"  {found.path} = {_shown(found.default)}" + (f"  [{note}]" if note else ""))
        lines.append(f"      {_help_line(meta)}")
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
    out = ["# Spec fields", "",
           "Generated from the schema's field metadata (reid_tao/config/schema.py) by "
           "`python scripts/gen_spec_fields.py`; do not edit by hand. "
           "Names and defaults are TAO's; fields marked *(new)* are reid_tao's. Status: *active*, *no effect* "
           "(accepted; a non-default value logs one line) or *rejected when changed* (TAO declares the field but "
           "never uses it).", ""]
    section = None
    for found in spec_fields():
        head = found.path.split(".")[0] if "." in found.path else "top level"
        if head != section:
            section = head
            out += ["", f"## {section}", "", "| field | default | allowed | status | what it does |",
                    "| --- | --- | --- | --- | --- |"]
        meta = found.meta
        name = f"`{found.path}`" + (" *(new)*" if meta.new else "")
        what = meta.help + (f" ({meta.why}{'; ' + meta.instead if meta.instead else ''})" if meta.why else "")
        out.append(f"| {name} | `{_shown(found.default)}` | {_cell(allowed_text(meta, resolve))} | "
                   f"{STATUSES[meta.status]} | {_cell(what)} |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"
