"""`reid train` end to end on tiny data: checkpoints, metadata, resume, errors."""

import pytest
import torch

from reid_tao.cli import main
from reid_tao.io import atomic_torch_save

from helpers import TINY_BACKBONE, tiny_overrides


def run_train(capsys, market, results, **extra):
    code = main(["train"] + tiny_overrides(market, results, **extra))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def test_train_writes_tao_checkpoints_and_metadata(tiny_market, tmp_path, capsys):
    results = tmp_path / "res"
    out = run_train(
        capsys,
        tiny_market,
        results,
        **{"train.num_epochs": 3, "train.checkpoint_interval": 2, "train.validation_interval": 1},
    )
    train_dir = results / "train"
    names = sorted(p.name for p in train_dir.glob("*.pth"))
    assert names == ["model_epoch_001.pth", "reid_model_latest.pth"]
    assert (train_dir / "experiment.yaml").is_file()
    assert not list(train_dir.glob(".*tmp*"))  # no temporary files left behind
    checkpoint = torch.load(train_dir / "reid_model_latest.pth", weights_only=True)
    meta = checkpoint["reid_tao"]
    # the stored config is the one source for the architecture; preprocessing travels as its own value
    assert meta["num_classes"] == 6 and meta["preprocessing"]["input_size"] == [32, 16]
    assert meta["config"]["model"]["backbone"] == TINY_BACKBONE and meta["config"]["model"]["feat_dim"] == 32
    assert checkpoint["epoch"] == 2
    # one summary line per epoch, with validation metrics
    lines = [line for line in out.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and lines[0].startswith("epoch 0/2 ") and "val (plain) mAP" in lines[0]
    assert (results / "train" / "logs").is_dir()


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_market, tmp_path, capsys):
    # Loader workers (num_workers >= 1) create the epoch's iterator before Lightning sets the sampler's
    # epoch: the data module must set it itself, or a resumed run replays epoch 0's batches.
    extra = {
        "train.num_epochs": 3,
        "model.with_center_loss": True,
        "train.optim.lr_steps": "[2]",
        "dataset.num_workers": 1,
        "dataset.pipeline": "cpu",
        "train.checkpoint_interval": 1,
    }
    run_train(capsys, tiny_market, tmp_path / "full", **extra)
    # interrupted after epoch 1 (num_epochs=1), then re-run with num_epochs=3: resumes automatically
    run_train(capsys, tiny_market, tmp_path / "split", **{**extra, "train.num_epochs": 1})
    out = run_train(capsys, tiny_market, tmp_path / "split", **extra)
    assert "resuming from" in out.out
    full = torch.load(tmp_path / "full/train/reid_model_latest.pth", weights_only=True)
    split = torch.load(tmp_path / "split/train/reid_model_latest.pth", weights_only=True)
    assert full["epoch"] == split["epoch"] == 2
    for key, value in full["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
    # the optimiser and the center optimiser resumed with their state (Adam moments, step counts)
    assert len(full["optimizer_states"]) == len(split["optimizer_states"]) == 2
    for ours, theirs in zip(full["optimizer_states"], split["optimizer_states"]):
        assert ours["state"].keys() == theirs["state"].keys()
        for index, state in ours["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs["state"][index][name])), name
        assert [g["lr"] for g in ours["param_groups"]] == [g["lr"] for g in theirs["param_groups"]]
    assert full["lr_schedulers"][0]["last_epoch"] == split["lr_schedulers"][0]["last_epoch"] == 3
    # the centers kept moving after the resume (the center optimiser steps in resumed epochs too)
    first = torch.load(tmp_path / "split/train/model_epoch_000.pth", weights_only=True)["state_dict"]
    assert not torch.equal(first["loss.center_loss.centers"], split["state_dict"]["loss.center_loss.centers"])


def test_centers_move_during_training(tiny_market, tmp_path, capsys):
    torch.manual_seed(0)
    run_train(
        capsys,
        tiny_market,
        tmp_path / "c",
        **{"train.num_epochs": 1, "model.with_center_loss": True, "train.checkpoint_interval": 1},
    )
    first = torch.load(tmp_path / "c/train/model_epoch_000.pth", weights_only=True)
    # rebuild the initial centers: the same seed gives the same initialisation
    import pytorch_lightning as pl

    from reid_tao.builders import build_module, load_experiment

    config = load_experiment(None, tiny_overrides(tiny_market, tmp_path / "c", **{"model.with_center_loss": True}))
    pl.seed_everything(config.train.seed, verbose=False)
    initial = build_module(config, num_classes=6).loss.center_loss.centers.detach()
    trained = first["state_dict"]["loss.center_loss.centers"]
    assert not torch.allclose(initial, trained)  # TAO never steps the center optimiser (bug B2)


@pytest.mark.slow
def test_raising_num_epochs_continues(tiny_market, tmp_path, capsys):
    run_train(capsys, tiny_market, tmp_path / "r", **{"train.num_epochs": 1})
    run_train(capsys, tiny_market, tmp_path / "r", **{"train.num_epochs": 2})
    assert torch.load(tmp_path / "r/train/reid_model_latest.pth", weights_only=True)["epoch"] == 1


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "reid_model_latest.pth"
    atomic_torch_save({"a": torch.ones(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"a": Unpicklable()}, target)
    assert torch.load(target, weights_only=True)["a"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["reid_model_latest.pth"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["dataset.train_dataset_dir=/nonexistent/train"],
            "dataset.train_dataset_dir: folder or list file /nonexistent/train does not exist",
        ),
        (["dataset.batch_size=10", "dataset.num_instances=4"], "divisible"),
        (["model.backbone=resnet_99"], "model.backbone"),
        (["model.backbone=resnet_18", "model.pretrain_choice=imagenet"], "model.pretrained_model_path"),  # offline
        # known before the Trainer starts its processes: one line, not PKSampler's ValueError traceback
        (
            ["train.num_gpus=2"],
            "6 identities are fewer than the 4 per PK batch (dataset.batch_size / "
            "dataset.num_instances) x 2 processes; lower dataset.batch_size or use fewer devices",
        ),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(tiny_market, tmp_path, capsys, overrides, message):
    code = main(["train"] + tiny_overrides(tiny_market, tmp_path / "bad") + overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_resume_from_other_dataset_is_refused(tiny_market, tmp_path, capsys):
    run_train(capsys, tiny_market, tmp_path / "x", **{"train.num_epochs": 1})
    from helpers import make_market

    other = make_market(tmp_path / "other", train_ids=range(1, 10))
    code = main(["train"] + tiny_overrides(other, tmp_path / "x"))
    assert code == 2 and "trained on 6 identities" in capsys.readouterr().err


def test_grad_clip_limits_the_update(tiny_market, tmp_path, capsys):
    def first_conv_change(name, clip):
        run_train(
            capsys,
            tiny_market,
            tmp_path / name,
            **{
                "train.num_epochs": 1,
                "train.optim.name": "SGD",
                "train.optim.base_lr": 0.5,
                "train.optim.warmup_iters": 1,
                "train.optim.weight_decay": 0.0,
                "train.optim.weight_decay_bias": 0.0,
                "train.grad_clip": clip,
            },
        )
        import pytorch_lightning as pl

        from reid_tao.builders import build_model, load_experiment

        pl.seed_everything(1234, verbose=False)
        initial = build_model(load_experiment(None, tiny_overrides(tiny_market, tmp_path)), num_classes=6)
        trained = torch.load(tmp_path / name / "train/reid_model_latest.pth", weights_only=True)["state_dict"]
        first_conv = initial.backbone[0][0].weight  # the tiny backbone's first convolution
        return (trained["model.backbone.0.0.weight"] - first_conv).norm().item()

    free, clipped = first_conv_change("free", 0.0), first_conv_change("clipped", 1e-6)
    assert free > 0 and clipped < 1e-3 * free


def test_corrupt_training_image_in_a_loader_worker_gives_one_line(tiny_market, tmp_path, capsys):
    import shutil

    market = tmp_path / "m"
    shutil.copytree(tiny_market, market)
    broken = sorted((market / "bounding_box_train").iterdir())[0]
    broken.write_bytes(b"truncated")
    code = main(
        ["train"] + tiny_overrides(market, tmp_path / "r", **{"dataset.num_workers": 1, "dataset.pipeline": "cpu"})
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err] and f"cannot read image {broken}" in err and "Traceback" not in err
