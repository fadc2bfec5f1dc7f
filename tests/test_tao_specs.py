"""TAO's own files work unchanged: the full experiment.yaml TAO 7.3 writes, TAO's two sample specs, and the
7.3 fields that only log a line."""

from pathlib import Path

import pytest
import yaml

from reid_tao.builders import (
    checkpoint_settings,
    extraction_batch_size,
    load_experiment,
    scheduler_arguments,
    wandb_settings,
)
from reid_tao.config.loader import schema_config
from reid_tao.config.notices import field_notices, warmup_length, warmup_warning
from reid_tao.errors import ConfigError

DATA = Path(__file__).parent / "data"
TAO73 = DATA / "tao73_experiment.yaml"
TAO_RESNET = DATA / "tao_experiment_market1501_resnet.yaml"
TAO_SWIN = DATA / "tao_experiment_market1501_swin.yaml"


def test_full_tao73_experiment_yaml_loads(tmp_path):
    config = load_experiment(str(TAO73))
    # TAO 7.3 writes `???` for the mandatory checkpoints: read as unset, so the fallback applies
    assert config.evaluate.checkpoint is None and config.inference.checkpoint is None
    assert config.wandb.enable is True and list(config.wandb.tags) == ["training", "tao-toolkit"]
    assert config.train.checkpointer.filename == "model_best_{epoch:03d}"
    # TAO's defaults of the fields without an effect here are quiet
    assert field_notices(config, "train") == [] and field_notices(config, "evaluate") == []


def test_every_tao73_field_is_in_the_schema():
    def keys(node, prefix=""):
        for key, value in node.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    schema = set(keys(yaml.safe_load(__import__("omegaconf").OmegaConf.to_yaml(schema_config()))))
    tao = set(keys(yaml.safe_load(TAO73.read_text())))
    assert not tao - schema


def test_mandatory_marker_in_a_required_field_is_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  backbone: ???\n")
    with pytest.raises(ConfigError, match=r"model.backbone is `\?\?\?`.*set a value"):
        load_experiment(str(spec))


def test_fields_without_effect_log_one_line_each(tmp_path):
    config = load_experiment(
        str(TAO73),
        [
            "train.optim.cosine_scale=64",
            "train.optim.lr_monitor=train_loss",
            "model_name=re_identification",
            "evaluate.trt_engine=/models/reid.engine",
        ],
    )
    train_lines = field_notices(config, "train")
    assert len(train_lines) == 3
    assert any(line.startswith("train.optim.cosine_scale=64.0 has no effect") for line in train_lines)
    assert any("lr_monitor" in line for line in train_lines)
    evaluate_lines = field_notices(config, "evaluate")
    assert any("TensorRT engines are built from the exported ONNX" in line for line in evaluate_lines)
    assert not any("cosine_scale" in line for line in evaluate_lines)  # train fields only for train


def test_unknown_keys_stay_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean train.checkpointer.save_top_k"):
        load_experiment(str(TAO73), ["train.checkpointer.save_topk=2"])


def test_tao73_settings_reach_the_constructors(tmp_path):
    config = load_experiment(
        str(TAO73),
        [
            "train.checkpointer.enable_topk=true",
            "train.checkpointer.save_top_k=2",
            "train.checkpoint_interval_unit=step",
            "train.checkpoint_interval=50",
            "evaluate.batch_size=7",
            "wandb.run_id=abc",
            "wandb.entity=''",
        ],
    )
    settings = checkpoint_settings(config)
    assert settings["unit"] == "step" and settings["interval"] == 50 and settings["periodic"]
    assert settings["best"]["monitor"] == "mAP" and settings["best"]["mode"] == "max"
    assert settings["best"]["save_top_k"] == 2 and not settings["best"]["save_on_train_epoch_end"]
    assert extraction_batch_size(config, "evaluate") == 7
    assert extraction_batch_size(config, "inference") == config.dataset.val_batch_size  # -1: TAO's default
    wandb = wandb_settings(config)
    assert wandb["id"] == "abc" and wandb["entity"] is None and wandb["project"] == "TAO Toolkit"
    replaced = load_experiment(
        str(TAO73),
        [
            "train.checkpointer.enable_topk=true",
            "train.checkpointer.replace_periodic=true",
            "train.checkpointer.monitor=train_loss",
        ],
    )
    settings = checkpoint_settings(replaced)
    assert not settings["periodic"] and settings["best"]["mode"] == "min"
    assert settings["best"]["save_on_train_epoch_end"]
    assert wandb_settings(load_experiment(None, ["wandb.enable=false"])) is None


@pytest.mark.parametrize("spec", [TAO_RESNET, TAO_SWIN], ids=["resnet", "swin"])
def test_tao_sample_specs_load_unchanged(spec):
    config = load_experiment(str(spec))
    assert config.train.num_epochs == 5


def test_warmup_longer_than_the_run_is_shortened_with_a_warning():
    swin = load_experiment(str(TAO_SWIN))  # cosine, warmup_epochs 20 of 5 epochs
    assert warmup_length(swin) == ("train.optim.warmup_epochs", 20, 2)
    assert scheduler_arguments(swin)["warmup_epochs"] == 2
    assert "train.optim.warmup_epochs=20 does not fit in train.num_epochs=5" in warmup_warning(swin)
    resnet = load_experiment(str(TAO_RESNET))  # linear, warmup_iters 10 of 5 epochs
    assert scheduler_arguments(resnet)["warmup_iters"] == 2
    fits = load_experiment(str(TAO_SWIN), ["train.num_epochs=120"])
    assert warmup_warning(fits) is None and scheduler_arguments(fits)["warmup_epochs"] == 20
    one_epoch = load_experiment(str(TAO_SWIN), ["train.num_epochs=1"])
    assert scheduler_arguments(one_epoch)["warmup_epochs"] == 0  # the schedule still builds


@pytest.mark.parametrize("spec", [TAO_RESNET, TAO_SWIN], ids=["linear", "cosine"])
def test_one_epoch_run_says_it_has_no_warmup(spec):
    import torch

    from reid_tao.engine.optim import build_scheduler

    config = load_experiment(str(spec), ["train.num_epochs=1"])
    line = warmup_warning(config)
    assert "no warmup" in line and "0 epoch" not in line
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.train.optim.base_lr)
    build_scheduler(optimizer, **scheduler_arguments(config))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.train.optim.base_lr)  # what the line says


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def pk_market(tmp_path_factory):
    """16 identities x 4 images: exactly one PK batch of TAO's batch_size 64 / num_instances 4."""
    from helpers import make_market

    return make_market(tmp_path_factory.mktemp("pk_market"), train_ids=range(1, 17), per_cam=2)


# the specs' fields are under test, not their 256x128 input: 16x fewer pixels keep their backbones' runs short
SMALL_INPUT = ["model.input_height=64", "model.input_width=32"]


def data_overrides(market, results):
    return [
        f"results_dir={results}",
        f"dataset.train_dataset_dir={market / 'bounding_box_train'}",
        f"dataset.query_dataset_dir={market / 'query'}",
        f"dataset.test_dataset_dir={market / 'bounding_box_test'}",
    ]


def resnet50_weights(path):
    """A local file in torchvision's ResNet50 format, standing in for TAO's pretrained_model_path."""
    import torch
    import torchvision

    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


@pytest.mark.slow
def test_full_tao73_experiment_yaml_runs_every_task(pk_market, tmp_path, capsys):
    from reid_tao.cli import main

    spec = str(TAO73)
    results = tmp_path / "results"
    weights = resnet50_weights(tmp_path / "resnet50.pth")
    train = [
        "train",
        "-e",
        spec,
        *data_overrides(pk_market, results),
        *SMALL_INPUT,
        "train.num_epochs=1",
        f"model.pretrained_model_path={weights}",
    ]
    assert main(train) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "wandb.enable=true but the wandb package is not installed" in out  # TAO's default: wandb on
    for task in ("evaluate", "inference", "export"):
        assert main([task, "-e", spec, *data_overrides(pk_market, results)]) == 0, capsys.readouterr().err
        assert f"{task}.checkpoint is not set: using" in capsys.readouterr().out
    assert (results / "evaluate" / "metrics.json").is_file() and (results / "inference" / "inference.json").is_file()
    assert (results / "export" / "reid_model_latest.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("spec", [TAO_RESNET, TAO_SWIN], ids=["resnet", "swin"])
def test_tao_sample_specs_train(spec, pk_market, tmp_path, capsys):
    from reid_tao.cli import main

    overrides = [*data_overrides(pk_market, tmp_path / "results"), *SMALL_INPUT, "train.num_epochs=1"]
    if spec == TAO_RESNET:
        overrides.append(f"model.pretrained_model_path={resnet50_weights(tmp_path / 'resnet50.pth')}")
    else:
        # TAO's Swin spec fine-tunes from a TAO Swin checkpoint (tests/test_tao_checkpoint.py loads one): this
        # test checks that the spec trains, from random weights
        overrides.append("model.pretrain_choice=''")
    assert main(["train", "-e", str(spec), *overrides]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert (tmp_path / "results" / "train" / "model_epoch_000.pth").is_file()
    if spec == TAO_SWIN:
        assert "train.optim.warmup_epochs=20 does not fit in train.num_epochs=1" in out


def test_wandb_logger_when_installed_else_one_line(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging

    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    from reid_tao.engine import loggers

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.INFO, logger="reid_tao"):
        found = loggers.experiment_loggers(tmp_path, {"project": "p"})
    assert [type(x) for x in found] == [TensorBoardLogger, loggers.ResumableCSVLogger]
    assert issubclass(loggers.ResumableCSVLogger, CSVLogger)
    assert "wandb package is not installed" in caplog.text
    made = {}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr("pytorch_lightning.loggers.WandbLogger", lambda **kw: made.setdefault("kw", kw))
    found = loggers.experiment_loggers(tmp_path, {"project": "p", "id": "run1"})
    assert len(found) == 3 and made["kw"]["project"] == "p" and made["kw"]["id"] == "run1"
    assert WandbLogger is not None
