"""A stop signal anywhere in training (inside a step, during validation, while the
epoch-end checkpoint is written, to the whole process group of a 2-process gloo run) ends with a checkpoint
that resumes to the uninterrupted run's weights, one line, exit 128 + signal and a FAILURE line in
status.json; never exit 0, never a hang. The signals are real and sent at deterministic points by
tests/support/signal_train.py (no sleeps racing the run)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REID, SUPPORT, tiny_overrides

pytestmark = pytest.mark.slow  # real training runs in fresh processes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = SUPPORT / "signal_train.py"
TIMEOUT = 600
DDP = {"train.num_gpus": 2, "dataset.batch_size": 4}


def environment() -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def finish(process: subprocess.Popen, what: str):
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the whole run, every rank
        process.communicate()
        pytest.fail(f"{what}: still running after {TIMEOUT} s (hung)")
    return process.returncode, out, err


def signalled(where: str, count: int, signum: int, target: str, overrides):
    """The run, in a session of its own so that a signal to its process group reaches only it."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), where, str(count), str(int(signum)), target, *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
        start_new_session=True,
    )
    return finish(process, f"{where} {target}")


def train(overrides):
    process = subprocess.Popen(
        [*REID, "train", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
        start_new_session=True,
    )
    code, out, err = finish(process, "train")
    assert code == 0, out[-2000:] + err[-3000:]
    return out


def assert_stopped(code: int, err: str, results: Path, signum: int, says: str) -> None:
    assert code == 128 + signum, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("reid train:")]
    assert len(ours) == 1 and says in ours[0], err[-3000:]
    assert "Traceback" not in err
    last = json.loads((results / "train" / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "FAILURE" and ours[0] == f"reid train: error: {last['message']}"
    assert not list((results / "train").glob(".*tmp*"))  # no half-written checkpoint left behind


def assert_same_weights(expected: Path, actual: Path) -> None:
    full, resumed = torch.load(expected, weights_only=True), torch.load(actual, weights_only=True)
    assert (resumed["global_step"], resumed["epoch"]) == (full["global_step"], full["epoch"])
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


@pytest.fixture(scope="module")
def uninterrupted(tiny_market, tmp_path_factory):
    results = tmp_path_factory.mktemp("full")
    train(tiny_overrides(tiny_market, results))  # in a process like the others: the same torch threads
    return results / "train" / "reid_model_latest.pth"


@pytest.mark.parametrize("where", ["validation", "checkpoint"])
def test_sigterm_during_validation_or_the_checkpoint_write_saves_the_epoch(where, uninterrupted, tiny_market, tmp_path):
    overrides = tiny_overrides(tiny_market, tmp_path)
    per_epoch = torch.load(uninterrupted, weights_only=True)["global_step"] // 2
    # the first validation step, or the first checkpoint write (reid_model_latest.pth at the end of epoch 1)
    code, _, err = signalled(where, 1, signal.SIGTERM, "self", overrides)
    assert_stopped(code, err, tmp_path, signal.SIGTERM, "preempted by SIGTERM at the end of epoch 1/2")
    latest = tmp_path / "train" / "reid_model_latest.pth"
    assert torch.load(latest, weights_only=True)["global_step"] == per_epoch  # the whole first epoch
    assert "resuming from" in train(overrides)
    assert_same_weights(uninterrupted, latest)


def test_a_second_signal_stops_at_once_with_its_exit_code_and_a_failure_line(tiny_market, tmp_path):
    code, _, err = signalled("step", 1, signal.SIGTERM, "twice", tiny_overrides(tiny_market, tmp_path))
    assert_stopped(code, err, tmp_path, signal.SIGTERM, "stopped at once by a second SIGTERM")


def test_sigterm_to_the_process_group_of_a_two_process_run_saves_and_resumes(tiny_market, tmp_path):
    full = tmp_path / "full"
    train(tiny_overrides(tiny_market, full, **DDP))
    overrides = tiny_overrides(tiny_market, tmp_path / "split", **DDP)
    # every process gets it, as from SLURM, Ctrl-C or `kill -- -PGID`; it used to deadlock.
    # Several processes agree on the flag every 10 steps and after an epoch's last batch (4 batches here); a stop
    # agreed on at the last batch lets the epoch end (its checkpoint), then stops.
    code, _, err = signalled("step", 2, signal.SIGTERM, "group", overrides)
    assert_stopped(code, err, tmp_path / "split", signal.SIGTERM, "preempted by SIGTERM at the end of epoch 1/2")
    train(overrides)
    latest = Path("train") / "reid_model_latest.pth"
    assert_same_weights(full / latest, tmp_path / "split" / latest)
