"""scripts/benchmark.py: each subcommand on CPU (tiny synthetic data, resnet_18), and a command line that is
answered without importing torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
TINY = ["--device", "cpu", "--backbone", "resnet_18", "--height", "32", "--width", "16", "--workers", "0"]


def run_script(*arguments: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # one JSON line
    return {**json.loads(lines[0]), "stderr": done.stderr}


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_train_benchmark_runs_on_cpu():
    report = run_script(
        "train",
        *TINY,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--num-instances",
        "2",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--ceiling-steps",
        "2",
    )
    keys = {
        "task",
        "ours_images_per_s",
        "reference_images_per_s",
        "ceiling_images_per_s",
        "ours_vs_reference",
        "ours_vs_ceiling",
        "seconds_per_epoch",
        "peak_gpu_mb",
        "device",
    }
    assert keys <= report.keys() and report["task"] == "train" and report["device"] == "cpu"
    for key in ("ours_images_per_s", "reference_images_per_s", "ceiling_images_per_s", "seconds_per_epoch"):
        assert report[key] > 0, key
    ratio = report["ours_images_per_s"] / report["reference_images_per_s"]
    assert abs(report["ours_vs_reference"] - ratio) < 0.05 * ratio  # rates are rounded in the JSON
    assert report["pipeline"] == "gpu" and report["cache_build_seconds"] >= 0 and report["measured_steps"] == 2
    # the reference also with our precision/layout and a worker per core, to separate the data-path gain
    assert report["tuned_reference_images_per_s"] > 0 and report["tuned_reference_workers"] >= 1
    tuned = report["ours_images_per_s"] / report["tuned_reference_images_per_s"]
    assert abs(report["ours_vs_tuned_reference"] - tuned) < 0.05 * tuned
    assert report["ceiling_includes_step_logging"] is False
    # seconds_per_epoch is a whole epoch (all its PK batches) at the measured rate, not the 3 capped steps
    assert report["steps_per_epoch"] > 3 and report["feat_dim"] == 2048  # the BoT recipe's feature size
    whole_epoch = report["steps_per_epoch"] * 8 / report["ours_images_per_s"]
    assert abs(report["seconds_per_epoch"] - whole_epoch) < 0.02 * whole_epoch + 0.01


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_evaluate_benchmark_runs_on_cpu():
    report = run_script("evaluate", *TINY, "--batch-size", "64", "--rerank")
    assert report["task"] == "evaluate" and report["device"] == "cpu"
    assert report["num_query"] > 0 and report["num_gallery"] > report["num_query"]
    assert 0 < report["mAP"] <= 1 and 0 <= report["rank1"] <= 1
    assert 0 < report["reranked_mAP"] <= 1 and 0 <= report["reranked_rank1"] <= 1
    # the breakdown: features, plain metrics and re-ranking timed apart, adding up to the whole
    parts = report["feature_seconds"] + report["metrics_seconds"] + report["rerank_seconds"]
    assert report["rerank_seconds"] > 0 and report["metrics_seconds"] > 0
    assert abs(report["seconds"] - parts) < 0.01


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_checkpoint_benchmark_writes_the_recipe_model():
    report = run_script("checkpoint", "--device", "cpu", "--backbone", "resnet_18", "--repeats", "1")
    assert report["feat_dim"] == 2048 and report["size_mb"] > 0
    assert report["background_blocks_s"] >= 0 and report["foreground_total_s"] > 0


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_onnx_benchmark_compares_the_data_types(tmp_path):
    from helpers import make_market

    market = make_market(tmp_path / "market", train_ids=range(1, 13))  # 72 images: 64 held out, 8 calibrate
    report = run_script(
        "onnx",
        *TINY,
        "--data",
        str(market),
        "--batch-sizes",
        "1,4",
        "--min-seconds",
        "0",
        "--calibration-images",
        "8",
        "--accuracy",
        "--int8-variant",
        "qop=cpu,quant_format=QOperator",
    )
    files = {"fp32", "fp16", "int8_tensorrt", "int8_cpu", "int8_qop"}  # one INT8 file per target, then the variant
    assert report["task"] == "onnx" and set(report["images_per_s"]) == files
    assert all(rate > 0 for rates in report["images_per_s"].values() for rate in rates.values())
    assert set(report["speedup_vs_fp32"]["int8_cpu"]) == {"1", "4"} and report["calibration_images"] == 8
    assert report["parity_vs_fp32"]["fp16"]["cosine_min"] > 0.999
    assert report["parity_vs_fp32"]["int8_cpu"]["cosine_min"] > 0.9
    assert report["float_nodes"]["int8_tensorrt"][0] == "/backbone/conv1/Conv"
    recipes = report["int8_recipes"]
    assert recipes["int8_cpu"]["activations"] == "uint8" and recipes["int8_tensorrt"]["activations"] == "int8"
    assert recipes["int8_qop"] == {**recipes["int8_cpu"], "quant_format": "QOperator"}
    assert set(report["accuracy"]) == files and report["num_query"] == 4
    assert "int8_flags" in report and report["cpu"]  # the CPU the figures belong to
    assert "\x1b[" not in report["stderr"]  # onnxruntime's coloured warnings are quieted


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_onnx_benchmark_variant_errors_are_one_line():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "onnx", "--int8-variant", "x=cpu,quant_fmt=QDQ"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "unknown field 'quant_fmt'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # a subprocess running a whole benchmark
def test_cluster_benchmark_sparse_equals_dense():
    settings = ["--num", "600", "--dim", "128", "--eps", "0.6", "--k1", "20", "--min-samples", "4"]
    sparse, dense = run_script("cluster", *settings), run_script("cluster", *settings, "--dense")
    assert (sparse["path"], dense["path"]) == ("sparse", "dense") and sparse["num"] == 600
    assert sparse["clusters"] > 10
    assert (sparse["clusters"], sparse["outliers"], sparse["purity"]) == (
        dense["clusters"],
        dense["outliers"],
        dense["purity"],
    )
    assert sparse["peak_rss_mb"] >= sparse["rss_before_mb"] > 0 and sparse["seconds"] > 0
    auto = run_script("cluster", "--num", "600", "--dim", "128")  # the spec's defaults: eps auto
    assert auto["eps"] is None and 0 < auto["eps_used"] < 1 and auto["k1"] == 10


def imported_by(*arguments: str) -> tuple[int, str, set[str]]:
    """Exit code, stderr and the modules loaded when benchmark.py runs with ``arguments``."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, *{list(arguments)!r}]\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as stop:\n    code = stop.code\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout.splitlines()[-1])
    return report["code"], done.stderr, set(report["modules"])


@pytest.mark.parametrize(
    "arguments", [["--help"], ["metrics", "--help"], ["onnx", "--help"], ["train", "--no-such-flag"], ["no-such-mode"]]
)
def test_help_and_bad_arguments_are_answered_without_torch(arguments):
    code, stderr, modules = imported_by(*arguments)
    assert code == (0 if "--help" in arguments else 2) and "Traceback" not in stderr
    assert not {"torch", "numpy", "reid_tao"} & modules
    # only the chosen subcommand's module is imported (for its options)
    chosen = {f"benchmarks.{arguments[0]}"} if arguments[0] in ("metrics", "onnx", "train") else set()
    assert {name for name in modules if name.startswith("benchmarks.")} - {
        "benchmarks.common",
        "benchmarks.inputs",
    } == chosen
