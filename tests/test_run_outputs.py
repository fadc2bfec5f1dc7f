"""What a run writes: status.json in TAO's format, TensorBoard and CSV logs that a resumed run continues,
<task>.log, and evaluate/inference/export falling back to the training's latest checkpoint."""

import csv
import json

import pytest

from reid_tao.cli import main
from reid_tao.io import append_line

from helpers import tiny_overrides

STATUS_KEYS = {"date", "time", "status", "verbosity"}
EPOCH_KEYS = {"epoch", "step", "max_epoch", "max_step", "time_per_epoch", "time_per_step", "eta", "kpi"}


def read_status(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(STATUS_KEYS <= set(line) for line in lines)
    return lines


@pytest.fixture(scope="module")
def resumed(tiny_market, module_tmp):
    """2 epochs, then the same command with num_epochs=3 (resumes from reid_model_latest.pth)."""
    results = module_tmp / "resumed"
    results.mkdir()
    periodic = {"train.checkpoint_interval": 1}  # model_epoch_NNN.pth files are checked here
    assert main(["train"] + tiny_overrides(tiny_market, results, **periodic)) == 0
    assert main(["train"] + tiny_overrides(tiny_market, results, **{**periodic, "train.num_epochs": 3})) == 0
    return results


@pytest.mark.slow
def test_status_json_holds_both_runs_in_tao_format(resumed):
    lines = read_status(resumed / "train" / "status.json")
    # TAO's sequence: STARTED, RUNNING lines, and a RUNNING "Train finished successfully." (no SUCCESS status)
    assert [line["status"] for line in lines if line["status"] != "RUNNING"] == ["STARTED"] * 2
    messages = [line.get("message") for line in lines]
    assert messages.count("Starting ReIdentification train.") == 2 and messages[-1] == "Train finished successfully."
    assert messages.count("Starting Training Loop.") == 2 and messages.count("Training loop complete.") == 2
    assert lines[-1]["status"] == "RUNNING"
    epochs = [line for line in lines if "epoch" in line]
    assert [line["epoch"] for line in epochs] == [0, 1, 2]
    assert all(EPOCH_KEYS <= set(line) for line in epochs)
    assert [line["max_epoch"] for line in epochs] == [1, 1, 2]  # zero-based, per run (TAO's convention)
    assert epochs[-1]["eta"] == "0:00:00" and epochs[0]["step"] < epochs[1]["step"] < epochs[2]["step"]
    for line in epochs:  # validation ran every epoch
        assert {"train_loss", "train_acc", "mAP", "cmc_rank_1", "cmc_rank_5", "cmc_rank_10"} <= set(line["kpi"])
        assert 0 <= line["kpi"]["mAP"] <= 1 and line["validation_ranking"] == "plain"
    assert lines[0]["date"].count("/") == 2 and lines[0]["time"].count(":") == 2


@pytest.mark.slow
def test_tensorboard_and_csv_continue_in_one_folder(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = resumed / "train"
    tensorboard = train / "lightning_logs" / "version_1"  # TAO's folder
    events = sorted(tensorboard.glob("events.out.tfevents.*"))
    assert len(events) == 2 and not [p for p in tensorboard.iterdir() if p.is_dir()]
    scalars = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.step for e in accumulator.Scalars(tag))
    for tag in (
        "train_loss_step",
        "train_loss_epoch",
        "train_acc_1",
        "base_lr",
        "mAP",
        "cmc_rank_1",
        "cmc_rank_5",
        "cmc_rank_10",
    ):  # TAO's scalar names
        assert tag in scalars, tag
    assert len(scalars["base_lr"]) == 3  # the lr of every epoch, both runs
    rows = list(csv.DictReader(open(train / "logs" / "metrics.csv")))
    assert sorted(int(row["epoch"]) for row in rows if row.get("base_lr")) == [0, 1, 2]
    log = (train / "train.log").read_text()
    # TAO's numbering (from 0, as the bar, model_epoch_NNN.pth and status.json's epoch / max_epoch)
    assert log.count("epoch 0/1") == 1 and log.count("epoch 2/2") == 1 and "resuming from" in log
    assert sorted(path.name for path in train.glob("model_epoch_*.pth")) == [
        "model_epoch_000.pth",
        "model_epoch_001.pth",
        "model_epoch_002.pth",
    ]


@pytest.mark.slow
def test_tasks_fall_back_to_the_latest_checkpoint(tiny_market, resumed, capsys):
    base = [
        f"results_dir={resumed}",
        f"dataset.query_dataset_dir={tiny_market / 'query'}",
        f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
        "dataset.num_workers=0",
    ]
    assert main(["evaluate"] + base) == 0, capsys.readouterr().err
    latest = resumed / "train" / "reid_model_latest.pth"
    assert f"evaluate.checkpoint is not set: using {latest}" in capsys.readouterr().out
    lines = read_status(resumed / "evaluate" / "status.json")
    assert [line["status"] for line in lines] == ["STARTED", "RUNNING", "RUNNING"]
    assert [line["message"] for line in lines] == [
        "Starting ReIdentification evaluate.",
        "Test metrics generated.",
        "Evaluate finished successfully.",
    ]
    assert set(lines[-1]["kpi"]) == {"mAP", "cmc_rank_1", "cmc_rank_5", "cmc_rank_10"}
    metrics = json.loads((resumed / "evaluate" / "metrics.json").read_text())
    assert lines[-1]["kpi"]["mAP"] == pytest.approx(metrics["mAP"])
    assert "results (" in (resumed / "evaluate" / "evaluate.log").read_text()

    # inference: no inference.* folders -> the dataset's query then test folder
    assert main(["inference"] + base) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "inference.checkpoint is not set" in out
    assert "using dataset.query_dataset_dir, dataset.test_dataset_dir" in out
    embeddings = json.loads((resumed / "inference" / "inference.json").read_text())
    assert len(embeddings) == metrics["num_query"] + len(list((tiny_market / "bounding_box_test").iterdir()))
    assert embeddings[0]["img_path"].startswith(str(tiny_market / "query"))

    assert main(["export", f"results_dir={resumed}"]) == 0, capsys.readouterr().err
    assert (resumed / "export" / "reid_model_latest.onnx").is_file()  # export's folder, not train/
    assert read_status(resumed / "export" / "status.json")[-1]["message"] == "Export finished successfully."


def test_failure_is_recorded_with_the_one_line_message(tmp_path, capsys):
    results = tmp_path / "none"
    assert main(["evaluate", f"results_dir={results}"]) == 2
    error = capsys.readouterr().err.strip()
    lines = read_status(results / "evaluate" / "status.json")
    assert [line["status"] for line in lines] == ["STARTED", "FAILURE"]
    assert error.endswith(lines[-1]["message"]) and "evaluate.checkpoint is not set" in lines[-1]["message"]
    assert lines[-1]["verbosity"] == "ERROR"


def test_append_line_adds_whole_lines_and_follows_the_umask(tmp_path):
    import os

    path = tmp_path / "status.json"
    old = os.umask(0o027)
    try:
        append_line(path, '{"a": 1}')
        append_line(path, '{"b": 2}\n')
    finally:
        os.umask(old)
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert path.stat().st_mode & 0o777 == 0o640


def test_checkpointer_best_k_and_step_interval(tiny_market, tmp_path, capsys):
    results = tmp_path / "ckpt"
    code = main(
        ["train"]
        + tiny_overrides(
            tiny_market,
            results,
            **{
                "train.num_epochs": 3,
                "train.checkpointer.enable_topk": True,
                "train.checkpointer.save_top_k": 2,
                "train.checkpoint_interval_unit": "step",
                "train.checkpoint_interval": 2,
            },
        )
    )
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in (results / "train").glob("*.pth"))
    best = [name for name in names if name.startswith("model_best_")]
    steps = [name for name in names if name.startswith("model_step_")]
    assert len(best) == 2 and "reid_model_latest.pth" in names  # top 2 of 3 epochs by mAP, beside the latest
    assert steps and all(int(name[len("model_step_") : -4]) % 2 == 0 for name in steps)
    assert not [name for name in names if name.startswith("model_epoch_")]
