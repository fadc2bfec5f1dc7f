"""What a run records per epoch: status.json's max_step and the logged base_lr (the lr the epoch trained with)."""

import csv
import json

import pytest

from reid_tao.cli import main
from reid_tao.engine.module import ReidModule

from helpers import tiny_overrides

EPOCHS = 3
BASE_LR, WARMUP_FACTOR, GAMMA = 0.01, 0.2, 0.1
# warmup_iters=2, lr_steps=[2]: epoch 0 warms up at factor 0.2, epoch 1 at 0.2 * (1 - 1/2) + 1/2 = 0.6,
# epoch 2 is past the warmup and the first step (x gamma): every epoch a different lr.
EXPECTED_LR = [BASE_LR * WARMUP_FACTOR, BASE_LR * 0.6, BASE_LR * GAMMA]


@pytest.fixture(scope="module")
def trained(tiny_market, tmp_path_factory):
    """3 epochs without validation; records the lr each training step used, per epoch."""
    results = tmp_path_factory.mktemp("epoch_records")
    used = {}
    step = ReidModule.training_step

    def recording_step(self, batch, batch_idx):
        used.setdefault(self.current_epoch, set()).add(self.optimizers().optimizer.param_groups[0]["lr"])
        return step(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReidModule, "training_step", recording_step)
        assert (
            main(
                ["train"]
                + tiny_overrides(
                    tiny_market,
                    results,
                    **{
                        "train.num_epochs": EPOCHS,
                        "train.optim.base_lr": BASE_LR,
                        "train.optim.warmup_factor": WARMUP_FACTOR,
                        "train.optim.warmup_iters": 2,
                        "train.optim.lr_steps": "[2]",
                        "train.optim.gamma": GAMMA,
                        "dataset.query_dataset_dir": "null",
                        "dataset.test_dataset_dir": "null",
                    },
                )
            )
            == 0
        )
    return results / "train", used


@pytest.mark.slow
def test_status_max_step_is_epochs_times_steps_per_epoch(trained):
    train, _ = trained
    epochs = [json.loads(line) for line in (train / "status.json").read_text().splitlines()]
    epochs = [line for line in epochs if "epoch" in line]
    assert [line["epoch"] for line in epochs] == list(range(EPOCHS))
    steps_per_epoch = epochs[0]["step"]
    assert steps_per_epoch >= 2 and [line["step"] for line in epochs] == [
        steps_per_epoch * (e + 1) for e in range(EPOCHS)
    ]
    assert all(line["max_step"] == EPOCHS * steps_per_epoch for line in epochs)


@pytest.mark.slow
def test_logged_base_lr_is_the_lr_each_epoch_trained_with(trained):
    train, used = trained
    assert sorted(used) == list(range(EPOCHS)) and all(len(lrs) == 1 for lrs in used.values())
    trained_with = [used[epoch].pop() for epoch in range(EPOCHS)]
    assert trained_with == pytest.approx(EXPECTED_LR)  # warmup values, then the step
    rows = [row for row in csv.DictReader(open(train / "logs" / "metrics.csv")) if row.get("base_lr")]
    logged = {int(row["epoch"]): float(row["base_lr"]) for row in rows}
    assert sorted(logged) == list(range(EPOCHS))
    assert [logged[epoch] for epoch in range(EPOCHS)] == pytest.approx(trained_with, rel=1e-6)
