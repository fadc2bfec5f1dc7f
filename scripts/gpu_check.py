#!/usr/bin/env python
"""Helpers of scripts/gpu_check.sh (one JSON object per step; see docs/benchmarks.md).

  python scripts/gpu_check.py record STEP RC SECONDS LOG >> gpu_check.jsonl   # the step's JSON line
  python scripts/gpu_check.py reid train|evaluate OVERRIDE...                  # `reid` measured, one JSON line
  python scripts/gpu_check.py env                                              # versions and the device
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from itertools import pairwise
from pathlib import Path

_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+).*?(\d+) img/s")


def record(step: str, rc: str, seconds: str, log: str) -> str:
    """The step's line: its last JSON object output as ``result``; on failure the log's last lines."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    result = None
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    entry = {"step": step, "rc": int(rc), "seconds": round(float(seconds), 1), "result": result}
    if int(rc) != 0:
        entry["timed_out"] = int(rc) in (124, 137)
        entry["log_tail"] = text.splitlines()[-15:]
    return json.dumps(entry)


class _EpochLines(logging.Handler):
    """Collects `reid train`'s one-line epoch summaries with the time each was written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _EPOCH_LINE.search(message):
            self.lines.append((time.perf_counter(), message))


def run_reid(task: str, overrides: list[str]) -> dict:
    """`reid TASK` in this process (its CLI entry point, not a bare Trainer), timed, with the peak GPU memory."""
    import torch

    from reid_tao.cli import main

    epochs = _EpochLines()
    logging.getLogger("reid_tao.train").addHandler(epochs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = main([task, *overrides])
    report = {"task": task, "exit_code": code, "wall_s": round(time.perf_counter() - start, 1)}
    if torch.cuda.is_available():
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if epochs.lines:
        times = [start] + [t for t, _ in epochs.lines]
        # an epoch's wall time includes what happens at its end (validation, checkpoint); the first also
        # the start (dataset scan, cache build, cuDNN autotuning)
        report["epoch_wall_s"] = [round(b - a, 1) for a, b in pairwise(times)]
        report["images_per_s"] = [int(_EPOCH_LINE.search(line).group(3)) for _, line in epochs.lines]
        report["epoch_lines"] = [line for _, line in epochs.lines]
    results = Path(next((o.split("=", 1)[1] for o in overrides if o.startswith("results_dir=")), "."))
    metrics = results / "evaluate" / "metrics.json"
    if task == "evaluate" and metrics.is_file():
        data = json.loads(metrics.read_text())
        report["metrics"] = {k: data[k] for k in ("mAP", "rank1", "mINP", "num_query", "num_gallery") if k in data}
    return report


def environment() -> dict:
    import platform

    import torch

    report = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for name in ("pytorch_lightning", "torchvision", "timm", "hydra", "omegaconf", "antlr4", "onnxruntime"):
        try:
            module = __import__(name)
            report[name] = getattr(module, "__version__", "present")
        except ImportError:
            report[name] = None
    return report


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "record":
        print(record(*rest))
    elif command == "reid":
        report = run_reid(rest[0], rest[1:])
        print(json.dumps(report), flush=True)
        return report["exit_code"]
    elif command == "env":
        print(json.dumps(environment()))
    else:
        raise SystemExit(f"unknown command {command!r}: record, reid or env")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
