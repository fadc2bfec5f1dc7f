"""`reid {train,evaluate,inference,export,crops} -e SPEC [section.key=value ...]`."""
import argparse
import importlib
import sys
from typing import List, Optional

from .config.loader import TASKS, describe_fields
from .errors import ReidError
from .io import error_line

DESCRIPTIONS = {
    "train": "train a re-identification model (resumes from results_dir/train/reid_model_latest.pth)",
    "evaluate": "CMC / mAP / mINP on query + gallery folders, plots, optional re-ranking",
    "inference": "write one embedding per image to a JSON file",
    "export": "export to ONNX (dynamic batch) and check it against PyTorch",
    "crops": "cut Market-named training crops out of tracker output (MOTChallenge or DeepStream KITTI)",
}
HELP_SECTIONS = {
    "train": ("model", "dataset", "train", "re_ranking", "adaptation"),
    "evaluate": ("model", "dataset", "re_ranking", "evaluate"),
    "inference": ("dataset", "inference"),
    "export": ("export",),
    "crops": ("crops",),
}


def _top_level_help() -> str:
    lines = ["usage: reid TASK -e SPEC.yaml [section.key=value ...]", "", "tasks:"]
    lines += [f"  {task:<10} {text}" for task, text in DESCRIPTIONS.items()]
    lines += ["", "Run `reid TASK --help` for the spec fields. Overrides use Hydra's grammar, e.g.",
              "  reid train -e specs/market1501.yaml train.num_epochs=120 'train.optim.lr_steps=[40,70]'"]
    return "\n".join(lines)


def _task_parser(task: str) -> argparse.ArgumentParser:
    fields = describe_fields(HELP_SECTIONS[task])
    parser = argparse.ArgumentParser(
        prog=f"reid {task}", description=DESCRIPTIONS[task], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"spec fields (section.key = default), settable in the spec or as overrides:\n{fields}")
    parser.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="spec",
                        help="TAO-style experiment spec (YAML); omitted: schema defaults + overrides")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (Hydra grammar)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        print(f"reid: unknown task '{task}'; choose one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    args = _task_parser(task).parse_args(rest)
    try:
        from .build import load_experiment  # imports torch: only once a task really runs

        config = load_experiment(args.spec, args.overrides)
        module = importlib.import_module(f"reid_tao.tasks.{task}")
        module.run(config)
    except ReidError as error:
        print(f"reid {task}: error: {error_line(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"reid {task}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
