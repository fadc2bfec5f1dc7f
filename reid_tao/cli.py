"""`reid {train,evaluate,inference,export,crops} -e SPEC [section.key=value ...]`."""
import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import List, Optional

from .config.catalog import describe_fields
from .config.loader import TASKS, load_config, task_results_dir
from .config.paths import check_paths
from .errors import Preempted, ReidError, Stopped
from .io import error_line

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
    lines += ["", "Run `reid TASK --help` for the spec fields. Overrides use Hydra's grammar, e.g.",
              "  reid train -e specs/market1501.yaml train.num_epochs=120 'train.optim.lr_steps=[40,70]'"]
    return "\n".join(lines)


def _fields_help(task: str) -> str:
    from .builders import resolve_choices  # the choices of table-backed fields are the implementations' tables

    fields = describe_fields(HELP_SECTIONS[task], resolve_choices)
    return ("spec fields (section.key = default  [allowed values; status], then what it does), settable in "
            f"the spec or as overrides:\n{fields}")


def _task_parser(task: str, with_fields: bool) -> argparse.ArgumentParser:
    """with_fields (only for --help: it imports the implementations' tables, i.e. torch): the field list."""
    description = DESCRIPTIONS[task]
    if task == "tune":
        from .config.search_space import default_space_help

        description += "\n\n" + default_space_help()
    parser = argparse.ArgumentParser(
        prog=f"reid {task}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fields_help(task) if with_fields else None)
    parser.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="spec",
                        help="TAO-style experiment spec (YAML); omitted: schema defaults + overrides")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (Hydra grammar)")
    return parser


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
        raise Stopped(f"{task} stopped by {signal.Signals(signum).name} before it finished; nothing partial was "
                      "written; run the same command again", signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        print(f"reid: unknown task '{task}'; choose one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    args = _task_parser(task, with_fields=bool({"-h", "--help"} & set(rest))).parse_args(rest)
    try:
        # The spec's own rules first: a missing file or a typo answers before torch is imported.
        config = load_config(args.spec, args.overrides)
        task_results_dir(config, task)  # set, or one line now
        check_paths(config, task)
        from .builders import check_spec  # imports torch and Lightning (seconds)

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
