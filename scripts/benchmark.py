#!/usr/bin/env python
"""Benchmarks for reid_tao on synthetic Market-1501-like data. Each subcommand prints one JSON line.

  python scripts/benchmark.py metrics --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu
  python scripts/benchmark.py rerank  --num-query 3368 --num-gallery 15913 --dim 2048 --device cpu
  python scripts/benchmark.py cluster --num 50000 --dim 512   # pseudo labels of 50,000 crops (adaptation)
  python scripts/benchmark.py train    --data /data/market1501 --device cuda --epochs 2
  python scripts/benchmark.py evaluate --data /data/market1501 --device cuda
  python scripts/benchmark.py onnx     --data /data/market1501 --checkpoint model.pth --accuracy  # int8: both targets
  python scripts/benchmark.py checkpoint --device cuda   # reid_model_latest.pth of ResNet50 + Adam + centers

train and evaluate run on real images: a Market-1501 root, or (no --data) a small synthetic set
generated into a temporary folder (CPU smoke runs: --backbone resnet_18 --height 64 --width 32).

Each subcommand is a module of scripts/benchmarks/ with ``add_arguments(parser)`` and ``run(args) -> dict``;
add one by writing the module and an entry in MODES. Only the chosen subcommand's module is imported, after
the arguments are known, and it imports torch inside ``run``: --help and a mistyped argument answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> its one-line help; the module is benchmarks.<subcommand>
MODES = {
    "metrics": "time pairwise_distance and evaluate_rankings",
    "rerank": "time k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)",
    "cluster": "pseudo labels of N synthetic crops' features: seconds, peak RSS",
    "train": "training images/s: ours vs a conventional loop vs the model-step ceiling (BoT recipe)",
    "evaluate": "Market end to end: query + gallery features, distances, metrics",
    "onnx": "fp32 vs fp16 vs INT8 ONNX: onnxruntime images/s, parity, accuracy",
    "checkpoint": "epoch-end checkpoint write: training thread vs background",
}


def build_parser(mode: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand with its help; the options of ``mode`` only (its module is imported for them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, help_text in MODES.items():
        subparser = tasks.add_parser(name, help=help_text)
        if name == mode:
            module = importlib.import_module(f"benchmarks.{name}")
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        raise SystemExit("--repeats must be >= 1")
    from benchmarks.common import print_json_line

    print_json_line(args.run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
