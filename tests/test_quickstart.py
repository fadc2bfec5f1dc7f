"""The README's quick start: generate the synthetic dataset, train, and see it learn."""

import csv
from pathlib import Path

import pytest

from reid_tao.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_generates_data_trains_and_learns(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spec's relative data/ and results/ folders land here
    code = main(
        [
            "train",
            "-e",
            str(ROOT / "specs" / "quickstart.yaml"),
            "train.num_epochs=4",
            "train.validation_interval=4",
            "train.optim.lr_steps=[3]",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (tmp_path / "data" / "quickstart" / "bounding_box_train").is_dir()
    assert (tmp_path / "results" / "quickstart" / "train" / "reid_model_latest.pth").is_file()
    logs = tmp_path / "results" / "quickstart" / "train" / "logs"
    rows = list(csv.DictReader(open(next(logs.glob("metrics.csv")))))
    epochs = [row for row in rows if row.get("train_loss_epoch")]
    losses = [float(row["train_loss_epoch"]) for row in epochs]
    accuracy = float(epochs[-1]["train_acc_1"])
    assert losses[-1] < 0.8 * losses[0]
    assert accuracy > 4 * (1 / 24)  # 24 identities: chance is ~4%
    validation = [row for row in rows if row.get("mAP")]
    assert float(validation[-1]["mAP"]) > 0.5
