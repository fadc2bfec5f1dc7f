"""`reid train` writes checkpoints in a background thread from a host snapshot, so an epoch
end does not wait for ~300 MB to reach the disk; the file is still complete, consistent and atomic."""

import threading

import pytest
import torch

from reid_tao.engine import checkpoint as checkpoint_module
from reid_tao.engine.checkpoint import BackgroundCheckpointIO
from reid_tao.errors import WriteError


def test_save_returns_before_the_write_and_writes_the_snapshot(tmp_path, monkeypatch):
    release, written = threading.Event(), []
    real_save = checkpoint_module.atomic_torch_save

    def slow_disk(payload, path):
        release.wait(timeout=20)  # a disk that takes as long as the test lets it
        real_save(payload, path)
        written.append(path)

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", slow_disk)
    io, weights = BackgroundCheckpointIO(), torch.zeros(4)
    path = tmp_path / "reid_model_latest.pth"
    io.save_checkpoint({"state_dict": {"w": weights}, "epoch": 3}, path)
    assert not written  # training goes on while the disk works
    weights += 1  # the next optimiser step changes the live tensor...
    release.set()
    io.teardown()  # the end of fit waits for the write
    saved = torch.load(path, weights_only=True)
    assert written and saved["epoch"] == 3 and saved["state_dict"]["w"].sum() == 0  # ...not the snapshot


def test_a_failed_background_write_is_raised_by_the_next_save_or_teardown(tmp_path, monkeypatch):
    def full_disk(payload, path):
        raise WriteError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", full_disk)
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"epoch": 0}, tmp_path / "a.pth")
    with pytest.raises(WriteError, match="No space left"):
        io.save_checkpoint({"epoch": 1}, tmp_path / "b.pth")
    io.save_checkpoint({"epoch": 2}, tmp_path / "c.pth")
    with pytest.raises(WriteError, match="No space left"):
        io.teardown()
    io.teardown()  # raised once, then clear
