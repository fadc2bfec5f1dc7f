"""onnx: fp32 vs fp16 vs INT8 ONNX of one model through onnxruntime on the CPU: images/s, parity, accuracy."""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import cpu_description
from benchmarks.inputs import TemporaryMarket, add_model_arguments, model_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, batch_size=64)
    parser.add_argument("--checkpoint", default=None, help="a reid checkpoint (default: random weights, speed only)")
    parser.add_argument("--feat-dim", type=int, default=256, help="model.feat_dim of the random-weight model")
    parser.add_argument("--data-types", default="fp32,fp16,int8", help="comma-separated export.data_type values")
    parser.add_argument(
        "--int8-targets",
        default="tensorrt,cpu",
        help="comma-separated export.int8_target values to build an INT8 file for (int8_<target>)",
    )
    parser.add_argument(
        "--int8-variant",
        action="append",
        default=[],
        metavar="NAME=TARGET[,FIELD=VALUE...]",
        help="also an INT8 file from TARGET's recipe with FIELDs changed (Int8Recipe in "
        "reid_tao/deploy/precision.py), reported as int8_NAME; repeatable. E.g. "
        "qop=cpu,quant_format=QOperator  rr=cpu,reduce_range=true  all=cpu,float_layers=",
    )
    parser.add_argument("--gem-pooling", action="store_true", help="model.gem_pooling of the random-weight model")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes to time")
    parser.add_argument(
        "--calibration",
        default=None,
        help="INT8 calibration images, folder or list file (default: <data>/bounding_box_train); "
        "64 of them are held out for the parity check",
    )
    parser.add_argument("--calibration-images", type=int, default=200, help="export.calibration_images")
    parser.add_argument("--min-seconds", type=float, default=10.0, help="timed seconds per file and batch size")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the files are timed in turn, this many times (images/s from the median run time)",
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument(
        "--session-optimization",
        default="all",
        choices=("basic", "extended", "all"),
        help="graph optimisation level of the timed sessions (onnxruntime's default: all)",
    )
    parser.add_argument("--accuracy", action="store_true", help="also Rank-1 / mAP of each model on query/gallery")
    parser.add_argument("--query", default=None, help="query folder or list file (default: <data>/query)")
    parser.add_argument(
        "--gallery", default=None, help="gallery folder or list file (default: <data>/bounding_box_test)"
    )
    parser.set_defaults(num_instances=4)


def _onnx_images_per_s(
    sessions: dict[str, Any], input_name: str, shape: tuple, min_seconds: float, rounds: int
) -> dict[str, float]:
    """Embedding throughput of each onnxruntime session on the same preprocessed random batch: two untimed runs
    each, then ``rounds`` rounds that time every session in turn for ``min_seconds / rounds`` (at least three
    runs). images/s = batch size / the median run time: on a shared machine another job's burst lands in a few
    runs of whichever model is running, and the rounds spread slower spells over all of them."""
    import statistics

    import numpy as np

    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for session in sessions.values():
        for _ in range(2):
            session.run(None, {input_name: batch})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            while len(times[name]) < 3 or time.perf_counter() - start < min_seconds / rounds:
                begin = time.perf_counter()
                session.run(None, {input_name: batch})
                times[name].append(time.perf_counter() - begin)
    return {name: shape[0] / statistics.median(runs) for name, runs in times.items()}


def _onnx_accuracy(run: Callable, query: list, gallery: list, preprocessing: Any) -> dict[str, float]:
    """Rank-1 / mAP of the embeddings ``run`` (float32 batch -> embeddings) gives query and gallery."""
    import numpy as np
    import torch

    from reid_tao.deploy.precision import image_batches
    from reid_tao.evaluation.distance import pairwise_distance
    from reid_tao.evaluation.metrics import evaluate_rankings

    records = query + gallery
    features = torch.from_numpy(
        np.concatenate([run(batch) for batch in image_batches([r.path for r in records], preprocessing, 64)])
    )
    pids = torch.tensor([r.pid for r in records])
    camids = torch.tensor([r.camid for r in records])
    q = len(query)
    result = evaluate_rankings(
        pairwise_distance(features[:q], features[q:]), pids[:q], pids[q:], camids[:q], camids[q:], max_rank=10
    )
    return {"rank1": round(float(result.cmc[0]), 4), "mAP": round(float(result.mAP), 4)}


def parse_int8_variant(text: str) -> tuple[str, Any]:
    """``NAME=TARGET[,FIELD=VALUE...]`` -> (NAME, that target's Int8Recipe with FIELDs replaced), e.g.
    ``qop=cpu,quant_format=QOperator`` or ``allint8=cpu,float_layers=`` (nothing in float; several layers are
    joined with +). Booleans are true/false."""
    from reid_tao.deploy.precision import INT8_TARGETS, check_recipe

    name, _, rest = text.partition("=")
    base, *pairs = rest.split(",")
    if not name or base not in INT8_TARGETS:
        raise SystemExit(
            f"--int8-variant {text!r}: expected NAME=TARGET[,FIELD=VALUE...] with TARGET one of "
            f"{', '.join(INT8_TARGETS)}"
        )
    recipe = INT8_TARGETS[base]
    changes: dict[str, Any] = {}
    for pair in pairs:
        field, _, value = pair.partition("=")
        if field not in recipe._fields:
            raise SystemExit(f"--int8-variant {text!r}: unknown field {field!r}; fields: {', '.join(recipe._fields)}")
        current = getattr(recipe, field)
        if isinstance(current, bool):
            if value not in ("true", "false"):
                raise SystemExit(f"--int8-variant {text!r}: {field} is true or false, got {value!r}")
            changes[field] = value == "true"
        elif isinstance(current, tuple):
            changes[field] = tuple(part for part in value.split("+") if part)
        else:
            changes[field] = value
    recipe = recipe._replace(**changes)
    try:
        check_recipe(recipe)
    except ValueError as error:
        raise SystemExit(f"--int8-variant {text!r}: {error}")
    return f"int8_{name}", recipe


def _int8_recipes(args: argparse.Namespace) -> dict[str, Any]:
    """Label -> recipe of every INT8 file to build: int8_<target> for --int8-targets, then the variants."""
    from reid_tao.deploy.precision import INT8_TARGETS

    recipes = {}
    for target in filter(None, args.int8_targets.split(",")):
        if target not in INT8_TARGETS:
            raise SystemExit(f"--int8-targets: {target!r} is none of {', '.join(INT8_TARGETS)}")
        recipes[f"int8_{target}"] = INT8_TARGETS[target]
    recipes.update(parse_int8_variant(text) for text in args.int8_variant)
    return recipes


def run(args: argparse.Namespace) -> dict[str, Any]:
    """fp32, fp16 and INT8 ONNX of one model, side by side: images/s of embedding with onnxruntime on the CPU
    at each batch size, cosine parity with fp32, and (--accuracy) Rank-1 / mAP on the query/gallery split.
    INT8 is built once per export.int8_target in --int8-targets (int8_tensorrt, int8_cpu) and per
    --int8-variant (a target's recipe with some choices changed: what the cpu target was chosen from)."""
    import random
    import tempfile
    from pathlib import Path

    import onnxruntime
    import torch

    from reid_tao.builders import build_model, load_experiment, load_trained_model, preprocessing_for
    from reid_tao.data.layouts import read_split, split_images
    from reid_tao.deploy import precision
    from reid_tao.deploy.export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from reid_tao.deploy.runtime import quiet_onnxruntime

    quiet_onnxruntime()  # its warnings carry colour escape codes into piped output
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    data_types = [name for name in args.data_types.split(",") if name != "int8"]
    recipes = _int8_recipes(args) if "int8" in args.data_types.split(",") else {}
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    with TemporaryMarket(args.data) as root, tempfile.TemporaryDirectory(prefix="reid_onnx_bench_") as scratch:
        if args.checkpoint:
            model, preprocessing, _ = load_trained_model(args.checkpoint, "--checkpoint")
        else:
            overrides = [f"model.feat_dim={args.feat_dim}", f"model.gem_pooling={str(args.gem_pooling).lower()}"]
            config = load_experiment(None, model_overrides(args, root) + overrides)
            torch.manual_seed(0)
            model, preprocessing = build_model(config, 751, load_pretrained=False), preprocessing_for(config)
        model = model.cpu().eval()
        files = {"fp32": Path(scratch) / "fp32.onnx"}
        export_onnx(model, files["fp32"], preprocessing.input_size, 17)
        calibration_paths = split_images(str(args.calibration or root / "bounding_box_train"), "--calibration")
        random.Random(0).shuffle(calibration_paths)
        held_out, calibration_paths = calibration_paths[:64], calibration_paths[64 : 64 + args.calibration_images]
        float_nodes, parity = {}, {}
        reference = precision.session_runner(files["fp32"], INPUT_NAME, OUTPUT_NAME)
        parity_batches = list(precision.image_batches(held_out, preprocessing, 32))
        converters = {name: precision.converter(name) for name in data_types if name != "fp32"}
        converters.update(
            {label: functools.partial(precision.quantize_int8, recipe=recipe) for label, recipe in recipes.items()}
        )
        for name, convert in converters.items():
            files[name] = Path(scratch) / f"{name}.onnx"
            calibration = precision.Calibration(INPUT_NAME, precision.image_batches(calibration_paths, preprocessing))
            float_nodes[name] = convert(files["fp32"], files[name], calibration)
            candidate = precision.session_runner(files[name], INPUT_NAME, OUTPUT_NAME)
            mean, minimum = precision.cosine_parity(reference, candidate, parity_batches)
            parity[name] = {"cosine_mean": round(mean, 5), "cosine_min": round(minimum, 5)}

        input_size = preprocessing.input_size
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(
            onnxruntime.GraphOptimizationLevel, f"ORT_ENABLE_{args.session_optimization.upper()}"
        )
        if args.threads:
            options.intra_op_num_threads = args.threads
        sessions, load_seconds = {}, {}
        for name in files:
            start = time.perf_counter()
            sessions[name] = onnxruntime.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
            load_seconds[name] = round(time.perf_counter() - start, 3)
        speed: dict[str, dict[str, float]] = {name: {} for name in files}
        for size in batch_sizes:
            rates = _onnx_images_per_s(sessions, INPUT_NAME, (size, 3, *input_size), args.min_seconds, args.rounds)
            for name, rate in rates.items():
                speed[name][str(size)] = round(rate, 1)
        del sessions
        report: dict[str, Any] = {
            "task": "onnx",
            "images_per_s": speed,
            "parity_vs_fp32": parity,
            "float_nodes": float_nodes,
            "int8_recipes": {label: recipe._asdict() for label, recipe in recipes.items()},
            "session_load_seconds": load_seconds,
            "timing": f"median run time, {args.rounds} interleaved rounds",
            "model": args.checkpoint or f"{args.backbone} random weights",
            "input_size": list(preprocessing.input_size),
            "calibration_images": len(calibration_paths),
            "onnxruntime": onnxruntime.__version__,
            "threads": args.threads or "onnxruntime default",
            "session_optimization": args.session_optimization,
            "cpu_count": os.cpu_count(),
            **cpu_description(),
            "load_average_at_end": [round(load, 2) for load in os.getloadavg()],  # other jobs on a shared machine
        }
        if "fp32" in speed:
            report["speedup_vs_fp32"] = {
                name: {size: round(rate / speed["fp32"][size], 2) for size, rate in rates.items()}
                for name, rates in speed.items()
                if name != "fp32"
            }
        if args.accuracy:
            query = read_split(str(args.query or root / "query"), "--query")
            gallery = read_split(str(args.gallery or root / "bounding_box_test"), "--gallery")
            runners = {name: precision.session_runner(path, INPUT_NAME, OUTPUT_NAME) for name, path in files.items()}
            if args.checkpoint:
                runners = {"pth": lambda batch: model(torch.from_numpy(batch)).detach().numpy(), **runners}
            with torch.no_grad():
                report["accuracy"] = {
                    name: _onnx_accuracy(run, query, gallery, preprocessing) for name, run in runners.items()
                }
            report["num_query"], report["num_gallery"] = len(query), len(gallery)
    return report
