"""Preemption: a stop signal mid-epoch writes a checkpoint at that step, exits 128+signum
with one line, and the re-run's final weights equal an uninterrupted run's, bit for bit on the CPU."""

import os
import signal

import pytest
import torch

from reid_tao.cli import main
from reid_tao.data.datasets import SeededSampler
from reid_tao.engine.module import ReidModule
from reid_tao.engine.preemption import RESUME_KEY, PreemptionCheckpoint, rng_states, set_rng_states
from reid_tao.errors import Preempted

from helpers import tiny_overrides


def train_with_signal(capsys, overrides, at_step: int, signum: int) -> tuple:
    """`reid train` in this process whose ``at_step``-th training step sends the process a real signal, so the
    stop point is deterministic (no timing); everything else is the production code path. Returns the exit
    code and stderr. (tests/test_signals.py sends them to fresh processes and their process groups.)"""
    step, calls = ReidModule.training_step, [0]

    def training_step(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        calls[0] += 1
        if calls[0] == at_step:
            os.kill(os.getpid(), signum)
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReidModule, "training_step", training_step)
        code = main(["train", *overrides])
    return code, capsys.readouterr().err


def run_train(capsys, overrides):
    code = main(["train"] + overrides)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


@pytest.mark.slow
def test_sigterm_mid_epoch_resumes_to_the_uninterrupted_weights(tiny_market, tmp_path, capsys):
    extra = {"train.num_epochs": 3, "model.with_center_loss": True, "train.optim.lr_steps": "[2]"}
    run_train(capsys, tiny_overrides(tiny_market, tmp_path / "full", **extra))
    full = torch.load(tmp_path / "full/train/reid_model_latest.pth", weights_only=True)
    per_epoch = full["global_step"] // 3
    assert per_epoch >= 3  # room for a stop strictly inside an epoch
    at_step = per_epoch + per_epoch // 2  # inside the second epoch

    split = tiny_overrides(tiny_market, tmp_path / "split", **extra)
    code, err = train_with_signal(capsys, split, at_step, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("reid train:")]
    assert len(ours) == 1 and "preempted by SIGTERM" in ours[0] and "run the same command to resume" in ours[0]
    assert "Traceback" not in err
    latest = tmp_path / "split/train/reid_model_latest.pth"
    stopped = torch.load(latest, weights_only=True)
    assert stopped["global_step"] == at_step and stopped["global_step"] % per_epoch != 0  # inside an epoch
    assert stopped[RESUME_KEY]["epoch"] == 1 and stopped[RESUME_KEY]["batch"] == at_step - per_epoch
    assert not list((tmp_path / "split/train").glob(".*tmp*"))

    out = run_train(capsys, split)
    assert "resuming inside epoch 2 after batch" in out.out
    resumed = torch.load(latest, weights_only=True)
    assert resumed["global_step"] == full["global_step"] and resumed["epoch"] == full["epoch"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(full["optimizer_states"], resumed["optimizer_states"]):  # incl. the center-loss optimiser
        for index, state in a["state"].items():
            for name, tensor in state.items():
                assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(b["state"][index][name])), name


def test_seeded_sampler_starts_mid_epoch_with_the_same_indices_and_seeds():
    base = list(range(20))
    sampler = SeededSampler(base, seed=7, rank=0)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.start_at(3, 8)
    assert list(sampler) == whole[8:]  # same indices, same per-sample seeds
    sampler.set_epoch(4)
    assert len(list(sampler)) == 20 and len(sampler) == 20  # other epochs start at 0


def test_rng_states_round_trip_through_a_safe_checkpoint(tmp_path):
    import random

    import numpy as np

    from reid_tao.io import safe_torch_load

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = tmp_path / "rng.pth"
    torch.save(rng_states(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(safe_torch_load(path, "x"))  # plain data: no opt-in needed
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_first_signal_sets_a_flag_and_a_second_stops_at_once(tmp_path):
    callback = PreemptionCheckpoint(tmp_path / "latest.pth", signals=(signal.SIGUSR1,))
    previous = signal.getsignal(signal.SIGUSR1)
    with callback.catching_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert callback.received == signal.SIGUSR1
        with pytest.raises(Preempted, match="second SIGUSR1") as stopped:  # not KeyboardInterrupt: Lightning
            os.kill(os.getpid(), signal.SIGUSR1)  # turns that into exit 1
        assert stopped.value.exit_code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == previous  # handlers restored after fit


@pytest.mark.slow
def test_resume_restores_the_global_rng_that_dropout_draws_from(tiny_market, tmp_path, capsys):
    """A Swin with dropout and drop path draws its masks from the global RNG: resuming mid-epoch gives the
    uninterrupted run's weights bit for bit only if the checkpoint's RNG states are restored."""
    extra = {
        "train.num_epochs": 1,
        "model.backbone": "swin_tiny_patch4_window7_224",
        "model.input_height": 32,
        "model.input_width": 32,
        "model.dropout_rate": 0.3,
        "model.drop_path": 0.2,
        "dataset.query_dataset_dir": "null",
        "dataset.test_dataset_dir": "null",
    }
    run_train(capsys, tiny_overrides(tiny_market, tmp_path / "full", **extra))
    full = torch.load(tmp_path / "full/train/reid_model_latest.pth", weights_only=True)
    per_epoch = full["global_step"]
    assert per_epoch >= 3
    at_step = per_epoch // 2 + 1  # inside the (only) epoch: it started from the epoch's reseeded RNG

    split = tiny_overrides(tiny_market, tmp_path / "split", **extra)
    code, err = train_with_signal(capsys, split, at_step, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    out = run_train(capsys, split)
    assert "resuming inside epoch 1 after batch" in out.out
    resumed = torch.load(tmp_path / "split/train/reid_model_latest.pth", weights_only=True)
    assert resumed["global_step"] == full["global_step"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
