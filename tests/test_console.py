"""What a run prints when stdout is not a terminal (CI, SLURM, a pipe): one line per epoch, no progress bars,
no escape codes, none of Lightning's chatter; the validation figures say which ranking they come from."""

import json
import subprocess
from pathlib import Path

import pytest

from reid_tao.engine.callbacks import throughput

from helpers import REID, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
CHATTER = (
    "GPU available",
    "TPU available",
    "limit_val_batches",
    "Trainer.fit` stopped",
    "max_epochs reached",
    "predict returned None",
    "not resumable",
    "manual optimization",
    "wandb",
    "litlogger",
)


@pytest.mark.slow
def test_piped_training_output_is_plain_lines(tiny_market, tmp_path):
    overrides = tiny_overrides(
        tiny_market,
        tmp_path,
        **{
            "train.num_epochs": 1,
            "wandb.enable": "false",
            "re_ranking.re_ranking": "true",
            "re_ranking.k1": 4,
            "re_ranking.k2": 2,
        },
    )
    result = subprocess.run(
        [*REID, "train", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out
    assert "\r" not in out and "\x1b" not in out
    assert not [phrase for phrase in CHATTER if phrase in out], out
    (summary,) = [line for line in out.splitlines() if line.startswith("epoch ")]
    # TAO's numbering (epoch / max_epoch from 0), and the validation names its ranking (re_ranking asks for it)
    assert summary.startswith("epoch 0/0 ") and "val (re-ranked) mAP" in summary
    status = [json.loads(line) for line in (tmp_path / "train" / "status.json").read_text().splitlines()]
    (epoch_line,) = [line for line in status if "epoch" in line]
    assert epoch_line["validation_ranking"] == "re-ranked" and "mAP" in epoch_line["kpi"]


def test_throughput_below_one_image_per_second_is_not_zero():
    assert throughput(1000, 10) == "100 img/s"
    assert throughput(25, 10) == "2.5 img/s"
    assert throughput(8, 20) == "2.5 s/img"


def test_quick_start_spec_does_not_print_the_wandb_line():
    from reid_tao.builders import load_experiment, wandb_settings

    assert wandb_settings(load_experiment(str(ROOT / "specs" / "quickstart.yaml"))) is None
