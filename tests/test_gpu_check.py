"""The device check (scripts/gpu_check.sh, docs/benchmarks.md "The device check"): its helpers, and its CI
rehearsal on a tiny synthetic set (GPU_CHECK_DEVICE=cpu GPU_CHECK_DATA=synthetic), so the one GPU call cannot
fail on a typo, a path or a missing helper. The rehearsal on the real archive is in docs/benchmarks.md."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import make_market

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


def market_archive(tmp_path: Path, top: str = "") -> Path:
    """A tiny tar.xz laid out as ../shared/data/market1501.tar.xz (the three folders at the top), or under ``top``."""
    market = make_market(tmp_path / "src", train_ids=range(1, 21), test_ids=range(101, 121), per_cam=2)
    archive = tmp_path / "market.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for folder in gpu_check.SPLITS:
            tar.add(market / folder, arcname=f"{top}/{folder}" if top else folder)
    return archive


def test_data_step_extracts_the_archive_as_the_steps_read_it_and_trims_for_the_rehearsal(tmp_path):
    archive = market_archive(tmp_path)
    full = gpu_check.prepare_data(str(tmp_path / "full"), str(archive), keep_ids=0, synthetic=False)
    assert full["images"] == {"bounding_box_train": 80, "query": 20, "bounding_box_test": 42}
    # the paths the train/evaluate steps pass: <dest>/bounding_box_train, <dest>/query, <dest>/bounding_box_test
    assert all((tmp_path / "full" / split).is_dir() for split in gpu_check.SPLITS)
    dest = tmp_path / "trimmed"
    (dest / "stale").mkdir(parents=True)  # a warm rerun starts from a fresh extraction
    trimmed = gpu_check.prepare_data(str(dest), str(archive), keep_ids=5, synthetic=False)
    assert not (dest / "stale").exists()
    assert trimmed["images"] == {"bounding_box_train": 20, "query": 5, "bounding_box_test": 5 * 2 + 1 + 1}
    pids = {int(p.name.split("_")[0]) for p in (dest / "bounding_box_test").glob("*.jpg")}
    assert pids == {-1, 0, 101, 102, 103, 104, 105}  # the kept queries' gallery images and the distractors


def test_data_step_says_what_is_wrong_with_an_archive_laid_out_otherwise(tmp_path):
    archive = market_archive(tmp_path, top="Market-1501-v15.09.15")
    with pytest.raises(
        SystemExit,
        match=r"no bounding_box_train, query, bounding_box_test at the top of the "
        r"archive \(found \['Market-1501-v15.09.15'\]\)",
    ):
        gpu_check.prepare_data(str(tmp_path / "dest"), str(archive), keep_ids=0, synthetic=False)


def test_clean_epoch_figures_leave_out_epoch_zero_and_validation():
    figures = gpu_check.epoch_figures([9.0, 3.0, 5.0], [2.0], images_per_epoch=11520)
    assert figures["clean_s_per_epoch"] == 4.0 and figures["clean_images_per_s"] == 2880.0
    assert figures["epoch0_s"] == 9.0
    assert figures["projected_120_epochs_s"] == 9.0 + 119 * 4.0 + 12 * 2.0
    assert "clean_s_per_epoch" not in gpu_check.epoch_figures([9.0], [], 100)  # one epoch: no clean figure


def test_carried_wheel_pins_match_the_tested_venv():
    """gpu_check_prepare.sh pins hydra-core, omegaconf and antlr4 to what the tests run with here."""
    script = (ROOT / "scripts" / "gpu_check_prepare.sh").read_text()
    pins = dict(re.findall(r"([a-z0-9-]+)==([0-9.]+)", script))
    assert set(pins) == {"hydra-core", "omegaconf", "antlr4-python3-runtime"}
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, name


def test_failed_step_record_keeps_the_log_tail(tmp_path):
    log = tmp_path / "step.log"
    log.write_text("starting\n" + "\n".join(f"line {n}" for n in range(30)) + "\nTraceback: boom\n")
    entry = json.loads(gpu_check.record("train", "124", "150", str(log)))
    assert entry["rc"] == 124 and entry["timed_out"] and entry["result"] is None
    assert len(entry["log_tail"]) == 15 and entry["log_tail"][-1] == "Traceback: boom"


@pytest.mark.slow  # a shell script starting several Python processes, training included
def test_rehearsal_writes_one_json_line_per_step(tmp_path):
    steps = ["env", "data", "train", "evaluate", "gpu_tests", "metrics_market", "rerank_market"]
    environment = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_DATA": "synthetic",
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_STEPS": " ".join(steps),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    # a warm rerun: an earlier call's lines and its finished training are there. The run must write this run's
    # lines only and train again from scratch (a checkpoint left in the step's output folder would be resumed
    # from, and this one is no checkpoint at all: resuming from it fails the step)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gpu_check.jsonl").write_text('{"step": "train", "rc": 0, "result": {}}\n')
    stale = tmp_path / "work" / "out" / "train" / "train"
    stale.mkdir(parents=True)
    (stale / "reid_model_latest.pth").write_bytes(b"an earlier call's finished training")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == steps  # this run's lines only
    assert all(line["rc"] == 0 for line in lines), lines
    results = {line["step"]: line["result"] for line in lines}
    assert results["env"]["device"] == "cpu" and results["env"]["hydra"]
    assert results["data"]["source"] == "synthetic" and results["data"]["images"]["query"] > 0
    train = results["train"]
    assert train["exit_code"] == 0 and len(train["train_s_per_epoch"]) == 3 and len(train["validation_s"]) == 1
    assert train["clean_s_per_epoch"] > 0 and train["projected_120_epochs_s"] > train["clean_s_per_epoch"] * 119
    assert "resuming" not in (tmp_path / "work" / "train.log").read_text()  # all 3 epochs trained, from scratch
    evaluate = results["evaluate"]
    assert evaluate["user_wall_s"] >= evaluate["wall_s"] > 0
    assert set(evaluate["metrics"]) >= {"plain", "re-ranked"}  # re-ranking on: both figures
    assert results["gpu_tests"]["skipped"] >= 5 and results["gpu_tests"].get("failed", 0) == 0
    assert results["metrics_market"]["num_query"] == 200 and results["rerank_market"]["task"] == "rerank"
    assert len(done.stdout.splitlines()) <= len(steps) + 1  # one short line per step
    # the step logs come back in one archive (the device returns at most 8 files from $OUT)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["gpu_check.jsonl", "gpu_check_logs.tar.gz"]
    with tarfile.open(tmp_path / "out" / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert "./train.log" in names and not any(name.endswith((".pth", ".jpg")) for name in names)
