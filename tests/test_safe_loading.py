"""No weights or checkpoint file runs code unless model.trust_weights_file=true.

Every field that names such a file gets a checkpoint carrying a pickled payload that would create a marker
file when unpickled: without the opt-in the command stops with one line and the marker never appears; with
it the file loads (and the payload runs: the opt-in is real)."""

import shutil
from pathlib import Path

import pytest
import torch

from reid_tao.cli import main
from reid_tao.engine.checkpoint import AtomicCheckpointIO
from reid_tao.errors import DataError
from reid_tao.io import safe_torch_load

from helpers import tiny_overrides


class Payload:
    """Unpickling calls open(marker, "w"): code from the file creating a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def trained(trained_checkpoint) -> Path:
    return trained_checkpoint


@pytest.fixture
def evil(trained, tmp_path):
    """(checkpoint with a payload, marker path the payload would create)."""
    marker = tmp_path / "payload_ran"
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["payload"] = Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(checkpoint, path)
    return path, marker


def _command(field, path, market, results):
    """(task, overrides) giving ``path`` to ``field``."""
    base = tiny_overrides(market, results, **{"train.num_epochs": 1})
    if field == "imagenet":
        return "train", base + ["model.pretrain_choice=imagenet", f"model.pretrained_model_path={path}"]
    if field == "self":
        return "train", base + ["model.pretrain_choice=self", f"model.pretrained_model_path={path}"]
    if field == "resume":
        return "train", base + [f"train.resume_training_checkpoint_path={path}"]
    if field == "latest":  # the automatic resume from results_dir/train/reid_model_latest.pth
        (results / "train").mkdir(parents=True)
        shutil.copy(path, results / "train" / "reid_model_latest.pth")
        return "train", base
    if field == "evaluate":
        return "evaluate", base + [f"evaluate.checkpoint={path}"]
    if field == "inference":
        return "inference", base + [f"inference.checkpoint={path}", f"inference.query_dataset={market / 'query'}"]
    return "export", base + [f"export.checkpoint={path}", f"export.onnx_file={results / 'model.onnx'}"]


FIELDS = {
    "imagenet": "model.pretrained_model_path",
    "self": "model.pretrained_model_path",
    "resume": "train.resume_training_checkpoint_path",
    "latest": "train.resume_training_checkpoint_path",
    "evaluate": "evaluate.checkpoint",
    "inference": "inference.checkpoint",
    "export": "export.checkpoint",
}


@pytest.mark.parametrize("field", list(FIELDS))
def test_payload_never_runs_and_the_command_says_so_in_one_line(field, evil, tiny_market, tmp_path, capsys):
    path, marker = evil
    task, overrides = _command(field, path, tiny_market, tmp_path / "res")
    capsys.readouterr()
    code = main([task] + overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert FIELDS[field] in err and "model.trust_weights_file=true" in err and "(io.open)" in err
    assert not marker.exists()


TRUSTED = [
    pytest.param(field, marks=[] if field in ("evaluate", "inference") else pytest.mark.slow) for field in FIELDS
]


@pytest.mark.parametrize("field", TRUSTED)
def test_trust_weights_file_loads_it(field, evil, tiny_market, tmp_path, capsys):
    path, marker = evil
    task, overrides = _command(field, path, tiny_market, tmp_path / "res")
    code = main([task] + overrides + ["model.trust_weights_file=true"])
    assert code == 0, capsys.readouterr().err
    assert marker.exists()  # full unpickling ran the file's code: only on request


def test_lightning_resume_load_goes_through_the_safe_loader(evil):
    """Trainer.fit(ckpt_path=...) reads the checkpoint with the CheckpointIO plugin's load_checkpoint."""
    path, marker = evil
    with pytest.raises(DataError, match="train.resume_training_checkpoint_path: .*trust_weights_file"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    assert "state_dict" in AtomicCheckpointIO(trust=True).load_checkpoint(path)
    assert marker.exists()


def test_allow_list_loads_lightning_hyperparameters_of_an_omegaconf_config(tmp_path):
    """What Lightning's save_hyperparameters stores for an OmegaConf config loads without the opt-in."""
    import argparse
    from collections import Counter

    from omegaconf import OmegaConf

    config = OmegaConf.create({"model": {"backbone": "resnet_50", "lr_steps": [40, 70]}, "path": None, "x": 1.5})
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "hyper_parameters": {"cfg": config},
            "hparams": argparse.Namespace(lr=0.1),
            "lr_schedulers": [{"milestones": Counter([40, 70])}],
            "dirpath": Path("/tmp"),
        },
        path,
    )
    loaded = safe_torch_load(path, "model.pretrained_model_path")
    assert loaded["hyper_parameters"]["cfg"].model.lr_steps == [40, 70]
    assert loaded["hparams"].lr == 0.1 and loaded["lr_schedulers"][0]["milestones"][40] == 1
