"""`reid {train,evaluate,inference,export,crops} -e SPEC [section.key=value ...]`."""

import argparse
import importlib
import os
import shutil
import signal
import sys
import textwrap
import threading
from contextlib import contextmanager

from reid_tao.config.catalog import closest_hint, describe_fields, describe_sections, help_groups, literal_choices
from reid_tao.config.loader import TASKS, load_config, task_results_dir
from reid_tao.config.paths import check_paths, named_paths
from reid_tao.config.table_choices import TABLE_CHOICES
from reid_tao.errors import ConfigError, Preempted, ReidError, Stopped, error_line

DESCRIPTIONS = {
    "train": "train a re-identification model (resumes from results_dir/train/reid_model_latest.pth)",
    "evaluate": "CMC / mAP / mINP of a checkpoint or exported ONNX on query + gallery folders, plots, re-ranking",
    "inference": "write one embedding per image to a JSON file",
    "export": "export to ONNX (dynamic batch; fp32, fp16 or calibrated INT8) and check it against PyTorch",
    "tune": "search spec fields (tune.space) on a validation split of the training ids; resumable (Optuna)",
    "crops": "cut Market-named training crops out of tracker output (MOTChallenge or DeepStream KITTI)",
}
HELP_SECTIONS = {
    "train": ("model", "dataset", "train", "re_ranking", "adaptation"),
    "evaluate": ("model", "dataset", "re_ranking", "evaluate"),
    "inference": ("dataset", "inference"),
    "export": ("export",),
    "tune": ("tune", "model", "dataset", "train"),
    "crops": ("crops",),
}


def _top_level_help() -> str:
    lines = ["usage: reid TASK -e SPEC.yaml [section.key=value ...]", "", "tasks:"]
    lines += [f"  {task:<10} {text}" for task, text in DESCRIPTIONS.items()]
    lines += [
        "",
        "Run `reid TASK --help` for the spec fields. Overrides use Hydra's grammar, e.g.",
        "  reid train -e specs/market1501.yaml train.num_epochs=120 'train.optim.lr_steps=[40,70]'",
    ]
    return "\n".join(lines)


def _help_width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 100))


def _resolve(choices):
    """A field's choices, for help: a table's (backbones, losses, ...) from the generated TABLE_CHOICES, so help
    imports no torch; the tables themselves only for a table that is missing there."""
    literal = literal_choices(choices)
    if literal is not None:
        return literal
    if choices in TABLE_CHOICES:
        return TABLE_CHOICES[choices]
    from reid_tao.builders import resolve_choices  # imports the implementations (torch)

    return resolve_choices(choices)


def _fields_help(task: str) -> str:
    """The short field overview of `reid TASK --help` (no torch): each section with its fields' names."""
    width = _help_width()
    head = textwrap.fill(
        f"spec fields by section, settable in the spec or as overrides (section.key=value). `reid "
        f"{task} --help SECTION` shows each field's default, allowed values and meaning, e.g. `reid "
        f"{task} --help {HELP_SECTIONS[task][0]}`; `reid {task} --help all` every field of this task "
        "(docs/spec_fields.md: all):",
        width,
        break_on_hyphens=False,
    )
    return f"{head}\n{describe_sections(HELP_SECTIONS[task], width)}"


def _section_help(task: str, section: str) -> str:
    """`reid TASK --help SECTION`: the fields of one section (or all), wrapped; ConfigError for another name."""
    groups = help_groups(HELP_SECTIONS[task])
    if section != "all" and section not in groups:
        raise ConfigError(
            f"reid {task} --help {section}: no such section; choose one of all, "
            f"{', '.join(groups)}{closest_hint(section, groups)}"
        )
    width = _help_width()
    fields = describe_fields(HELP_SECTIONS[task], _resolve, width, None if section == "all" else section)
    head = textwrap.fill(
        "spec fields (section.key = default  [allowed values; status], then what it does), settable "
        "in the spec or as overrides:",
        width,
    )
    return f"{head}\n{fields}"


def _task_parser(task: str, with_fields: bool) -> argparse.ArgumentParser:
    """with_fields (only for --help): the overview of the spec fields."""
    description = DESCRIPTIONS[task]
    if task == "tune":
        from reid_tao.config.search_space import default_space_help

        description += "\n\n" + default_space_help()
    parser = argparse.ArgumentParser(
        prog=f"reid {task}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fields_help(task) if with_fields else None,
    )
    parser.add_argument(
        "-e",
        "--experiment_spec_file",
        "--experiment_spec",
        dest="spec",
        help="TAO-style experiment spec (YAML); omitted: schema defaults + overrides",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (Hydra grammar)")
    return parser


def _help_section(rest: list[str]) -> str | None:
    """SECTION of `reid TASK --help SECTION` (a word after -h/--help that is no option or override), else None."""
    for flag, after in zip(rest, rest[1:]):
        if flag in ("-h", "--help") and not after.startswith("-") and "=" not in after:
            return after
    return None


def _early_checks(config, task: str) -> None:
    """What needs no torch, answered before its seconds of imports: a mistyped model.backbone or dataset.layout
    (their tables import no torch) and a data folder without images. check_spec and the readers check the same
    again."""
    from reid_tao.config.catalog import check_choice_in, find_field
    from reid_tao.data.layouts import LAYOUT_CHOICES, check_split_folder, resolve_layout
    from reid_tao.model.backbones import BACKBONES

    for path, allowed in (("model.backbone", BACKBONES), ("dataset.layout", LAYOUT_CHOICES)):
        section, key = path.split(".")
        check_choice_in(find_field(path), config[section][key], tuple(allowed))
    for field, kind in named_paths(config, task):
        if kind != "data":
            continue
        section, key = field.split(".")
        if field == "dataset.train_dataset_dir" and config.adaptation.enable:  # read unlabeled (any names)
            resolve_layout(config[section][key], field, config.dataset.layout)
        else:
            check_split_folder(config[section][key], field, config.dataset.layout)


def _worker_rank() -> bool:
    """A non-zero rank of a multi-process run (torchrun's RANK, Lightning's DDP children's LOCAL_RANK/NODE_RANK)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _release_process_group() -> None:
    """Destroy the process group of a multi-process run (Lightning leaves it set up) while the interpreter is
    whole: at exit, gloo's threads otherwise abort the process now and then ("terminate called without an active
    exception", exit -6 after the outputs were written). Only after success: a failed peer could block it."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


@contextmanager
def _sigterm_raises(task: str):
    """SIGTERM raises :class:`Stopped` in the main thread instead of killing the process on the spot, so open
    atomic writes remove their temporary files and status.json gets its FAILURE line (training replaces this
    with its own handlers while it fits)."""

    def stop(signum, frame):
        raise Stopped(
            f"{task} stopped by {signal.Signals(signum).name} before it finished; nothing partial was "
            "written; run the same command again",
            signum,
        )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        print(f"reid: unknown task '{task}'; choose one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    section = _help_section(rest)
    if section is not None:
        try:
            print(_section_help(task, section))
        except ReidError as error:
            print(f"reid {task}: error: {error_line(error)}", file=sys.stderr)
            return error.exit_code
        except BrokenPipeError:  # `reid train --help all | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit)
        return 0
    args = _task_parser(task, with_fields=bool({"-h", "--help"} & set(rest))).parse_args(rest)
    try:
        # The spec's own rules first: a missing file or a typo answers before torch is imported.
        config = load_config(args.spec, args.overrides)
        task_results_dir(config, task)  # set, or one line now
        check_paths(config, task, load_config(args.spec) if args.overrides else config)  # (the spec file's own)
        _early_checks(config, task)
        from reid_tao.builders import check_spec  # imports torch and Lightning (seconds)

        check_spec(config)
        module = importlib.import_module(f"reid_tao.tasks.{task}")
        with _sigterm_raises(task):
            module.run(config)
        _release_process_group()
    except Preempted as error:  # every process of a multi-process run stops with it: rank 0 says it
        if not _worker_rank():
            print(f"reid {task}: error: {error_line(error)}", file=sys.stderr)
        return error.exit_code
    except ReidError as error:
        print(f"reid {task}: error: {error_line(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"reid {task}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
