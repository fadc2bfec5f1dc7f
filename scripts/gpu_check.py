#!/usr/bin/env python
"""Helpers of scripts/gpu_check.sh (one JSON object per step; see docs/benchmarks.md, "The device check").

python scripts/gpu_check.py record STEP RC SECONDS LOG >> gpu_check.jsonl   # the step's JSON line
python scripts/gpu_check.py env                                              # versions and the device
python scripts/gpu_check.py wheels FOLDER TARGET                             # install the carried wheels
python scripts/gpu_check.py data DEST (--archive A [--keep-ids N] | --synthetic)
python scripts/gpu_check.py reid train|evaluate OVERRIDE...                  # `reid` measured, one JSON line
python scripts/gpu_check.py accuracy SPEC RESULTS [--capped] OVERRIDE...     # train + evaluate, gap to the CPU
python scripts/gpu_check.py pytest PYTEST_ARGS...                            # pytest, outcome counts as JSON
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()  # before the heavy imports: "user" wall times include them

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+).*?([\d.]+) img/s")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
# specs/market1501_cpu.yaml on the CPU (docs/results.md: fp32, 2-core EPYC, after the seed change), in %
CPU_REFERENCE = {"plain": {"rank1": 64.5, "mAP": 42.2}, "re-ranked": {"rank1": 67.8, "mAP": 56.2}}
ACCURACY_TOLERANCE = 3.0  # points: more than this between the GPU and the CPU run means a GPU-only bug
# the recipe's schedule, for the 120-epoch projection (specs/market1501.yaml)
RECIPE_EPOCHS, RECIPE_VALIDATION_INTERVAL = 120, 10


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


# -- environment, wheels, data ----------------------------------------------------------------------------
def environment() -> dict:
    import platform

    import torch

    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    for name in (
        "pytorch_lightning",
        "torchvision",
        "timm",
        "hydra",
        "omegaconf",
        "antlr4",
        "onnxruntime",
        "sklearn",
        "filelock",
        "pytest",
    ):
        try:
            module = __import__(name)
            report[name] = getattr(module, "__version__", "present")
        except ImportError:
            report[name] = None
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        report["gpu_memory_mb"] = {"free": round(free / 2**20), "total": round(total / 2**20)}
    return report


def install_wheels(folder: str, target: str) -> dict:
    """The carried wheels, installed as on the GPU machine (no index, no dependencies, into ``target``, which
    gpu_check.sh puts first on PYTHONPATH), then imported from there by a fresh interpreter."""
    wheels = sorted(str(path) for path in Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(
            f"no wheels in {folder}/: run `bash scripts/gpu_check_prepare.sh` in the repository root "
            "first (the GPU machine has no hydra-core, omegaconf or antlr4)"
        )
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--target",
            target,
            *wheels,
        ],
        check=True,
    )
    probe = (
        "import json, antlr4, hydra, omegaconf; print(json.dumps({'hydra': hydra.__version__, "
        "'omegaconf': omegaconf.__version__, 'hydra_file': hydra.__file__, 'antlr4_file': antlr4.__file__}))"
    )
    found = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)
    outside = [key for key in ("hydra_file", "antlr4_file") if not found[key].startswith(str(Path(target)))]
    if outside:
        raise SystemExit(f"{', '.join(outside)} not imported from {target}: is it first on PYTHONPATH? {found}")
    return {"wheels": [Path(wheel).name for wheel in wheels], **found}


def _pid(name: str) -> int:
    return int(name.split("_", 1)[0])


def _trim(root: Path, keep_ids: int, distractors: int = 50) -> None:
    """Rehearsal sizes: the first ``keep_ids`` identities of the training set and of the query set (with their
    gallery images and ``distractors`` id-0 gallery images); every other image is deleted."""

    def images(split: str) -> list:
        return sorted((root / split).glob("*.jpg"))

    def first_ids(paths: list) -> set:
        return set(sorted({_pid(p.name) for p in paths if _pid(p.name) > 0})[:keep_ids])

    train = images("bounding_box_train")
    kept = first_ids(train)
    drop = [p for p in train if _pid(p.name) not in kept]
    query = images("query")
    kept = first_ids(query)
    drop += [p for p in query if _pid(p.name) not in kept]
    gallery = images("bounding_box_test")
    zeros = [p for p in gallery if _pid(p.name) == 0][distractors:]
    drop += zeros + [p for p in gallery if _pid(p.name) > 0 and _pid(p.name) not in kept]
    for path in drop:
        path.unlink()


def prepare_data(dest: str, archive: str | None, keep_ids: int, synthetic: bool) -> dict:
    """The dataset the steps read, made fresh: the Market archive extracted into ``dest`` exactly as on the
    GPU machine (`tar -xJf`; its three folders sit at the top of the archive), or a tiny synthetic set (CI)."""
    root = Path(dest)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if synthetic:
        from reid_tao.data.synthetic import generate_synthetic_market

        generate_synthetic_market(root, num_train_ids=4, num_test_ids=6)
    else:
        if shutil.which("tar") and shutil.which("xz"):
            extractor = "tar -xJf"  # twice as fast as tarfile here
            subprocess.run(["tar", "-xJf", archive, "-C", str(root)], check=True)
        else:
            import tarfile

            extractor = "tarfile"
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(root, filter="data")
        missing = [split for split in SPLITS if not (root / split).is_dir()]
        if missing:
            found = sorted(path.name for path in root.iterdir())
            raise SystemExit(
                f"{archive}: no {', '.join(missing)} at the top of the archive (found {found}); "
                "the steps read <dest>/bounding_box_train, <dest>/query and <dest>/bounding_box_test"
            )
        if keep_ids:
            _trim(root, keep_ids)
    counts = {split: sum(1 for _ in (root / split).glob("*.jpg")) for split in SPLITS}
    return {
        "root": str(root),
        "images": counts,
        "trimmed_to_ids": keep_ids or None,
        "source": "synthetic" if synthetic else Path(archive).name,
        "extractor": None if synthetic else extractor,
    }


# -- `reid train` / `reid evaluate`, measured --------------------------------------------------------------
def _cuda_sync(trainer) -> None:
    import torch

    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_timer():
    """A Lightning callback timing each epoch's training (its start to its last batch, synchronised: two syncs
    an epoch) apart from its validation, so steady-state figures exclude both validation and epoch 0."""
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.train_s: list = []
            self.validation_s: list = []
            self.images_per_epoch = 0
            self._start = self._validation_start = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            _cuda_sync(trainer)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if batch_idx + 1 == trainer.num_training_batches:
                _cuda_sync(trainer)
                self.train_s.append(time.perf_counter() - self._start)
                self.images_per_epoch = (
                    trainer.num_training_batches * trainer.train_dataloader.batch_size * trainer.world_size
                )

        def on_validation_epoch_start(self, trainer, module) -> None:
            self._validation_start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module) -> None:
            _cuda_sync(trainer)
            self.validation_s.append(time.perf_counter() - self._validation_start)

    return EpochTimer()


class _EpochLines(logging.Handler):
    """Collects `reid train`'s one-line epoch summaries."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _EPOCH_LINE.search(message):
            self.lines.append(message)


def epoch_figures(train_s: list, validation_s: list, images_per_epoch: int) -> dict:
    """Clean seconds per epoch (epochs after the first: no warm-up, cache copy or cuDNN autotuning; validation
    timed apart) and the recipe's 120 epochs projected from them (epoch 0 as measured, 119 clean epochs, one
    validation every RECIPE_VALIDATION_INTERVAL epochs as the last one measured)."""
    report = {
        "train_s_per_epoch": [round(s, 2) for s in train_s],
        "validation_s": [round(s, 2) for s in validation_s],
        "images_per_epoch": images_per_epoch,
    }
    if len(train_s) >= 2:
        clean = sum(train_s[1:]) / len(train_s[1:])
        validation = validation_s[-1] if validation_s else 0.0
        report.update(
            {
                "clean_s_per_epoch": round(clean, 2),
                "clean_images_per_s": round(images_per_epoch / clean, 1),
                "epoch0_s": round(train_s[0], 2),
                "projected_120_epochs_s": round(
                    train_s[0] + (RECIPE_EPOCHS - 1) * clean + RECIPE_EPOCHS // RECIPE_VALIDATION_INTERVAL * validation,
                    1,
                ),
                "projection": f"epoch 0 + {RECIPE_EPOCHS - 1} x clean + "
                f"{RECIPE_EPOCHS // RECIPE_VALIDATION_INTERVAL} x last validation "
                "(startup and the final checkpoint not included)",
            }
        )
    return report


def _metrics_of(results: Path) -> dict | None:
    """metrics.json of an evaluation as {"plain": ..., "re-ranked": ...} (percent, rounded)."""
    path = results / "evaluate" / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())

    def pick(block: dict) -> dict:
        return {key: round(100 * block[key], 2) for key in ("rank1", "mAP", "mINP") if key in block}

    figures = {data.get("ranking", "plain"): pick(data)}
    if isinstance(data.get("plain"), dict):
        figures["plain"] = pick(data["plain"])
    return {**figures, "num_query": data.get("num_query"), "num_gallery": data.get("num_gallery")}


def run_reid(task: str, overrides: list) -> dict:
    """`reid TASK` in this process (its CLI entry point, not a bare Trainer), timed, with the peak GPU memory.

    ``wall_s`` is the task itself; ``user_wall_s`` also counts this process's imports, i.e. what a user
    timing `reid TASK` sees (less the interpreter's own start, a few tens of milliseconds)."""
    import torch

    from reid_tao.cli import main
    from reid_tao.tasks import train as train_task

    timer = _epoch_timer()
    build_trainer = train_task.build_trainer

    def build_timed_trainer(*args, extra_callbacks=(), **kwargs):
        return build_trainer(*args, extra_callbacks=[*extra_callbacks, timer], **kwargs)

    train_task.build_trainer = build_timed_trainer  # reid train's own Trainer, plus the timer
    lines = _EpochLines()
    # on the epoch summary's own logger: a handler on "reid_tao" would stop the CLI adding its console one
    logging.getLogger("reid_tao.train").addHandler(lines)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = main([task, *overrides])
    end = time.perf_counter()
    report = {
        "task": task,
        "exit_code": code,
        "wall_s": round(end - start, 1),
        "user_wall_s": round(end - _PROCESS_START, 1),
    }
    if torch.cuda.is_available():
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if timer.train_s:
        report.update(epoch_figures(timer.train_s, timer.validation_s, timer.images_per_epoch))
        report["epoch_lines"] = lines.lines
    results = Path(next((o.split("=", 1)[1] for o in overrides if o.startswith("results_dir=")), "."))
    if task == "evaluate":
        report["metrics"] = _metrics_of(results)
    return report


def run_accuracy(spec: str, results: str, overrides: list, capped: bool) -> dict:
    """Trains ``spec`` and evaluates it (re-ranking on: plain and re-ranked figures), then the gap in points
    to the spec's CPU figures. A gap over ACCURACY_TOLERANCE flags a GPU-only bug (bf16, on-device
    augmentation, channels_last). ``capped``: a rehearsal with fewer epochs and images; no comparison."""
    from reid_tao.cli import main

    shutil.rmtree(results, ignore_errors=True)
    # as the CPU run: no validation during training (the spec has no query/gallery); those are evaluate's
    evaluation_only = ("dataset.query_dataset_dir=", "dataset.test_dataset_dir=")
    train_overrides = [override for override in overrides if not override.startswith(evaluation_only)]
    start = time.perf_counter()
    trained = main(["train", "-e", spec, f"results_dir={results}", *train_overrides])
    middle = time.perf_counter()
    evaluated = (
        main(
            [
                "evaluate",
                "-e",
                spec,
                f"results_dir={results}",
                "re_ranking.re_ranking=true",
                f"evaluate.checkpoint={results}/train/reid_model_latest.pth",
                *overrides,
            ]
        )
        if trained == 0
        else -1
    )
    end = time.perf_counter()
    report = {
        "task": "accuracy",
        "spec": spec,
        "exit_code": trained or evaluated,
        "train_wall_s": round(middle - start, 1),
        "evaluate_wall_s": round(end - middle, 1),
        "metrics": _metrics_of(Path(results)),
        "cpu_reference": CPU_REFERENCE,
    }
    metrics = report["metrics"]
    if capped:
        report["gap"] = "not compared: a capped rehearsal (fewer epochs and images than the CPU run)"
    elif metrics is not None:
        gaps = {
            ranking: {key: round(metrics[ranking][key] - reference[key], 2) for key in reference}
            for ranking, reference in CPU_REFERENCE.items()
            if ranking in metrics
        }
        worst = max(abs(gap) for figures in gaps.values() for gap in figures.values())
        report.update(
            {
                "gap_points": gaps,
                "flagged": worst > ACCURACY_TOLERANCE,
                "verdict": (
                    f"GPU-only bug suspected: a gap of {worst:.1f} points (> {ACCURACY_TOLERANCE})"
                    if worst > ACCURACY_TOLERANCE
                    else f"within {ACCURACY_TOLERANCE} points"
                ),
            }
        )
    return report


def run_pytest(arguments: list) -> tuple:
    """pytest in this process; its own output, then one JSON line of outcome counts and failed test ids."""
    import pytest

    class Summary:
        stats: dict = {}

        def pytest_terminal_summary(self, terminalreporter) -> None:
            Summary.stats = {
                key: list(value)
                for key, value in terminalreporter.stats.items()
                if key in ("passed", "failed", "error", "skipped")
            }

    code = int(pytest.main(arguments, plugins=[Summary()]))
    counts = {key: len(value) for key, value in Summary.stats.items()}
    failed = [report.nodeid for key in ("failed", "error") for report in Summary.stats.get(key, [])]
    import torch

    return code, {
        "task": "pytest",
        "exit_code": code,
        "cuda": torch.cuda.is_available(),
        **counts,
        "failed_tests": failed,
    }


def main(argv: list) -> int:
    command, rest = argv[0], argv[1:]
    if command == "record":
        print(record(*rest))
        return 0
    if command == "env":
        print(json.dumps(environment()))
        return 0
    if command == "wheels":
        print(json.dumps(install_wheels(*rest)))
        return 0
    if command == "data":
        parser = argparse.ArgumentParser(prog="gpu_check.py data")
        parser.add_argument("dest")
        parser.add_argument("--archive")
        parser.add_argument("--keep-ids", type=int, default=0, help="rehearsal: keep this many identities a split")
        parser.add_argument("--synthetic", action="store_true", help="a tiny synthetic set instead (CI)")
        args = parser.parse_args(rest)
        if not args.synthetic and not args.archive:
            parser.error("--archive or --synthetic")
        print(json.dumps(prepare_data(args.dest, args.archive, args.keep_ids, args.synthetic)))
        return 0
    if command == "reid":
        report = run_reid(rest[0], rest[1:])
        print(json.dumps(report), flush=True)
        return report["exit_code"]
    if command == "accuracy":
        capped = "--capped" in rest
        spec, results, *overrides = [argument for argument in rest if argument != "--capped"]
        report = run_accuracy(spec, results, overrides, capped)
        print(json.dumps(report), flush=True)
        return report["exit_code"]
    if command == "pytest":
        code, report = run_pytest(rest)
        print(json.dumps(report), flush=True)
        return code
    raise SystemExit(f"unknown command {command!r}: record, env, wheels, data, reid, accuracy or pytest")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
