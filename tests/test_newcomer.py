"""What a newcomer hit following the README on a fresh clone (one test per friction)."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reid_tao.cli import main
from reid_tao.errors import ConfigError, DataError

from helpers import tiny_adaptation_overrides, tiny_overrides, write_untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- 1: a changed architecture meets resume
def test_resume_with_another_feat_dim_and_gem_pooling_names_the_fields(tiny_market, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    write_untrained_checkpoint(tiny_market, tmp_path / "train" / "reid_model_latest.pth")  # feat_dim 32, no GeM
    code = main(
        ["train", *tiny_overrides(tiny_market, tmp_path, **{"model.feat_dim": 64, "model.gem_pooling": "true"})]
    )
    err = one_line(capsys)
    assert code == 2 and "cannot resume" in err
    assert "model.feat_dim=32, model.gem_pooling=False" in err and "model.feat_dim=64, model.gem_pooling=True" in err


def test_resume_from_a_weights_only_file_is_one_line(tiny_market, tmp_path, capsys):
    source = write_untrained_checkpoint(tiny_market, tmp_path / "model_epoch_004.pth")  # no optimiser state
    code = main(
        ["train", *tiny_overrides(tiny_market, tmp_path / "r"), f"train.resume_training_checkpoint_path={source}"]
    )
    err = one_line(capsys)
    assert code == 2 and "weights only" in err and "model.pretrain_choice=self" in err


# --------------------------------------------------------------------------- 2: adaptation keeps the source's model
def test_the_adaptation_source_decides_the_model_and_the_log_says_so(tiny_market, tmp_path, caplog):
    from reid_tao.builders import ADAPTATION_NUM_CLASSES, adaptation_source_config, build_model, load_experiment

    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")  # resnet_18, 32-d, no GeM
    spec = load_experiment(
        None,
        tiny_overrides(
            tiny_market, tmp_path, **{"model.feat_dim": 64, "model.gem_pooling": "true", "model.input_height": 64}
        )
        + ["adaptation.enable=true", f"adaptation.source_checkpoint={source}"],
    )
    with caplog.at_level(logging.INFO, logger="reid_tao"):
        config = adaptation_source_config(spec)
        model = build_model(config, ADAPTATION_NUM_CLASSES)
    assert (config.model.feat_dim, config.model.gem_pooling, config.model.input_height) == (32, False, 32)
    decided = [r.getMessage() for r in caplog.records if "decides the model" in r.getMessage()]
    assert len(decided) == 1 and "model.feat_dim=64" in decided[0] and "model.gem_pooling=True" in decided[0]
    stored = torch.load(source, weights_only=True)["state_dict"]
    own = model.state_dict()
    assert all(
        torch.equal(own[key[len("model.") :]], value) for key, value in stored.items() if "classifier" not in key
    )
    loaded = [r.getMessage() for r in caplog.records if "backbone tensors" in r.getMessage()]
    assert loaded and "do not fit" not in loaded[0]


@pytest.mark.slow
def test_an_adaptation_run_trains_and_records_the_source_model(tiny_market, tmp_path):
    from omegaconf import OmegaConf

    from reid_tao.builders import load_experiment
    from reid_tao.tasks import train

    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")  # 32-d, no GeM
    config = load_experiment(
        None,
        tiny_overrides(
            tiny_market,
            tmp_path,
            **{
                "model.feat_dim": 64,
                "model.gem_pooling": "true",
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
                "train.num_epochs": 1,
                "wandb.enable": "false",
            },
        )
        + [
            *tiny_adaptation_overrides(source),
            "adaptation.min_samples=2",
        ],
    )
    results = train.run(config)
    stored = torch.load(results / "reid_model_latest.pth", weights_only=True)["reid_tao"]["config"]["model"]
    ran = OmegaConf.load(results / "experiment.yaml").model
    assert (stored["feat_dim"], stored["gem_pooling"]) == (ran.feat_dim, ran.gem_pooling) == (32, False)
    train.run(config)  # the same command again resumes: the spec's 64-d, GeM model is not asked of the checkpoint


def resnet34_checkpoint(tiny_market, path: Path) -> Path:
    from reid_tao.builders import build_model, checkpoint_metadata, load_experiment

    config = load_experiment(None, tiny_overrides(tiny_market, path.parent, **{"model.backbone": "resnet_34"}))
    model = build_model(config, 6, load_pretrained=False)
    torch.save(
        {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "reid_tao": checkpoint_metadata(config, 6),
        },
        path,
    )
    return path


def test_a_resnet34_file_under_a_resnet18_spec_is_refused_not_loaded_in_part(tiny_market, tmp_path):
    from reid_tao.builders import adaptation_source_config, build_model, load_experiment

    source = resnet34_checkpoint(tiny_market, tmp_path / "r34.pth")
    fine_tune = load_experiment(
        None,
        tiny_overrides(tiny_market, tmp_path)
        + ["model.backbone=resnet_18", "model.pretrain_choice=self", f"model.pretrained_model_path={source}"],
    )
    with pytest.raises(DataError, match="holds a resnet_34 model but model.backbone=resnet_18"):
        build_model(fine_tune, 6)
    # adaptation: the source's resnet_34 is what gets adapted, whole
    adapt = load_experiment(
        None,
        tiny_overrides(tiny_market, tmp_path) + ["adaptation.enable=true", f"adaptation.source_checkpoint={source}"],
    )
    model = build_model(adaptation_source_config(adapt), 1)
    stored = torch.load(source, weights_only=True)["state_dict"]
    backbone = [key for key in stored if key.startswith("model.backbone.")]
    assert len(backbone) > 200
    assert all(torch.equal(model.state_dict()[key[len("model.") :]], stored[key]) for key in backbone)


# --------------------------------------------------------------------------- 3: synthetic data only where meant
def synthetic_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"results_dir: {tmp_path / 'results'}\ndataset:\n  synthetic: true\n"
        f"  train_dataset_dir: {tmp_path / 'data' / 'bounding_box_train'}\n"
    )
    return spec


def test_a_mistyped_override_is_not_filled_with_synthetic_data(tmp_path, capsys, monkeypatch):
    import reid_tao.data.synthetic as synthetic

    def never(*args, **kwargs):
        raise AssertionError("generated a dataset at a mistyped path")

    monkeypatch.setattr(synthetic, "generate_synthetic_market", never)
    typo = tmp_path / "dta" / "bounding_box_train"
    code = main(["train", "-e", str(synthetic_spec(tmp_path)), f"dataset.train_dataset_dir={typo}"])
    err = one_line(capsys)
    assert code == 2 and f"dataset.train_dataset_dir: folder {typo} does not exist" in err
    assert not typo.parent.exists()


def test_synthetic_data_goes_where_the_spec_file_or_an_empty_folder_says(tmp_path):
    from reid_tao.config.loader import load_config
    from reid_tao.config.paths import check_paths

    spec = str(synthetic_spec(tmp_path))
    check_paths(load_config(spec), "train")  # the spec file's own path
    own = [f"dataset.train_dataset_dir={tmp_path / 'data' / 'bounding_box_train'}"]
    check_paths(load_config(spec, own), "train", load_config(spec))  # the same path given again
    made = tmp_path / "mine"
    made.mkdir()
    override = [f"dataset.train_dataset_dir={made / 'bounding_box_train'}"]
    check_paths(load_config(spec, override), "train", load_config(spec))  # an empty folder the user made
    (made / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="does not exist"):
        check_paths(load_config(spec, override), "train", load_config(spec))


# --------------------------------------------------------------------------- 4: no silent CPU processes
def test_several_gpus_without_a_gpu_is_refused_unless_cpu_processes_are_asked_for(monkeypatch):
    from reid_tao.engine import devices

    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train.num_gpus=2 .* no CUDA GPU .*train.accelerator=cpu"):
        devices.plan_devices("auto", 2, [0], 1)
    with pytest.raises(ConfigError, match="evaluate.accelerator=cpu"):
        devices.plan_devices("auto", 1, [0], 2, section="evaluate")
    plan = devices.plan_devices("cpu", 2, [0], 1)
    assert (plan.accelerator, plan.devices, plan.strategy) == ("cpu", 2, "ddp")
    assert devices.plan_devices("auto", 1, [0], 1).devices == 1


# --------------------------------------------------------------------------- 7 and 8: a finished run, checkpoint sizes
@pytest.mark.slow
def test_only_the_latest_keeps_the_optimiser_state_and_a_finished_run_says_no_epoch_ran(tiny_market, tmp_path, capsys):
    from reid_tao.builders import load_experiment, load_trained_model
    from reid_tao.tasks import train

    config = load_experiment(
        None,
        tiny_overrides(
            tiny_market,
            tmp_path,
            **{
                "train.num_epochs": 1,
                "train.checkpoint_interval": 1,
                "train.checkpointer.enable_topk": "true",
                "train.checkpointer.monitor": "train_loss",
                "wandb.enable": "false",
            },
        ),
    )
    results = train.run(config)
    latest, periodic, best = (
        torch.load(results / name, weights_only=True)
        for name in ("reid_model_latest.pth", "model_epoch_000.pth", "model_best_000.pth")
    )
    assert "optimizer_states" in latest
    assert "optimizer_states" not in periodic and "optimizer_states" not in best
    assert (results / "model_epoch_000.pth").stat().st_size < 0.6 * (results / "reid_model_latest.pth").stat().st_size
    load_trained_model(str(results / "model_epoch_000.pth"), "evaluate.checkpoint")  # evaluate / export read it
    out = capsys.readouterr().out.splitlines()
    sizes = [line for line in out if line.startswith("checkpoints in")]
    assert len(sizes) == 1 and " MB (with the optimiser state" in sizes[0] and "2 more" in sizes[0]
    assert "training finished" in out and not any("no epoch ran" in line for line in out)
    train.run(config)  # the same command again: nothing left to train
    finished = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training finished")]
    assert len(finished) == 1 and "no epoch ran" in finished[0] and "train.num_epochs=1" in finished[0]


# --------------------------------------------------------------------------- 6: outputs named after the model
def test_evaluating_two_models_keeps_the_outputs_of_each(tiny_market, tmp_path, capsys):
    import json

    first = write_untrained_checkpoint(tiny_market, tmp_path / "model.pth")
    second = write_untrained_checkpoint(tiny_market, tmp_path / "model_int8.pth", num_classes=5)
    results = tmp_path / "r"
    for checkpoint in (first, second):
        assert main(["evaluate", *tiny_overrides(tiny_market, results), f"evaluate.checkpoint={checkpoint}"]) == 0
    folder = results / "evaluate"
    for stem in ("model", "model_int8"):
        assert json.loads((folder / f"metrics_{stem}.json").read_text())["checkpoint"] == str(tmp_path / f"{stem}.pth")
        assert (folder / f"cmc_curve_{stem}.png").is_file() and (folder / f"sampled_matches_{stem}.png").is_file()
    # the plain names hold the latest evaluation, findable as before
    assert (folder / "metrics.json").read_bytes() == (folder / "metrics_model_int8.json").read_bytes()
    assert (folder / "cmc_curve.png").read_bytes() == (folder / "cmc_curve_model_int8.png").read_bytes()
    assert "named after model_int8.pth" in capsys.readouterr().out


# --------------------------------------------------------------------------- 7: quicker and quieter answers
def run_without_torch(argv: list, tmp_path: Path) -> subprocess.CompletedProcess:
    """`reid ARGV` in a fresh interpreter that fails when torch was imported by the time main returned."""
    code = (
        "import sys\nfrom reid_tao.cli import main\ncode = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "100"},
        timeout=120,
    )


def test_a_mistyped_backbone_and_a_folder_without_images_are_answered_before_torch(tiny_market, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = {
        "model.backbone=resnet_19": "did you mean resnet_18?",
        f"dataset.query_dataset_dir={tmp_path / 'empty'}": "contains no .jpg/.jpeg/.png images",
    }
    for override, message in cases.items():
        # resnet_18: a production name, as a user's spec would have (the test backbone is registered with torch)
        overrides = tiny_overrides(tiny_market, tmp_path, **{"model.backbone": "resnet_18"})
        done = run_without_torch(["train", *overrides, override], tmp_path)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_a_dataset_root_with_a_readme_is_not_told_to_use_the_readme_as_a_list_file(tmp_path):
    from reid_tao.data.layouts import read_split

    root = tmp_path / "Market-1501"
    (root / "bounding_box_train").mkdir(parents=True)
    (root / "readme.txt").write_text("Market-1501 dataset\nThe file names are 0002_c1s1_000451_03.jpg ...\n")
    with pytest.raises(DataError) as error:
        read_split(str(root), "dataset.train_dataset_dir")
    assert "readme.txt" not in str(error.value) and "it holds folders (bounding_box_train)" in str(error.value)
    (root / "list_train.txt").write_text("# path pid\nbounding_box_train/a.jpg 3 1\n")
    with pytest.raises(DataError, match=r"it holds list files \(list_train.txt\): set dataset.train_dataset_dir"):
        read_split(str(root), "dataset.train_dataset_dir")


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "model:\n  backbone resnet_18\n  feat_dim: 256\n",
            "line 2, column 3: 'backbone resnet_18' runs on into line 3",
        ),
        ('model:\n  backbone: "resnet_18\n  feat_dim: 256\n', "line 2, column 13:"),
        ("model:\n  backbone: [resnet_18\n  feat_dim: 256\n", "line 2, column 13:"),
        ("model:\n  backbone: resnet_18\n feat_dim: 256\n", "line 3, column 2:"),  # already the right line
    ],
)
def test_a_yaml_mistake_is_reported_at_its_own_line(tmp_path, text, line):
    from reid_tao.config.loader import load_config

    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(str(spec))
    assert f"cannot parse spec file {spec}: {line}" in str(error.value)


def test_help_is_quick_short_and_wrapped(tmp_path):
    done = run_without_torch(["train", "--help"], tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) < 60 and max(map(len, lines)) <= 100, done.stderr
    assert "`reid train --help SECTION`" in " ".join(done.stdout.split()) and "  train.optim " in done.stdout
    done = run_without_torch(["train", "--help", "model"], tmp_path)  # the table's choices, without torch
    assert done.returncode == 0 and "model.backbone = 'resnet_50'  [one of 'resnet_18'" in done.stdout, done.stderr
    assert max(map(len, done.stdout.splitlines())) <= 100 and "dataset." not in done.stdout
    done = run_without_torch(["train", "--help", "trian"], tmp_path)
    assert done.returncode == 2 and "did you mean train?" in done.stderr


def test_the_unlabeled_summary_shows_no_identity_count():
    from reid_tao.data.records import ImageRecord, summary_table

    records = [ImageRecord(f"{i}.jpg", 0, i % 2) for i in range(5)]
    table = summary_table({"train": records}, unlabeled=("train",)).splitlines()
    assert table[2].split() == ["train", "unlabeled", "5", "2"]


def test_one_decode_thread_is_one_thread(tmp_path):
    from reid_tao.data.cached_pipeline import DecodedImageCache

    from helpers import write_person

    write_person(tmp_path / "0001_c1s1_000000_00.jpg", 1, 1, 0)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("reid_tao.data.cached_pipeline")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        DecodedImageCache.build([str(tmp_path / "0001_c1s1_000000_00.jpg")], (32, 16), "bilinear", num_threads=1)
    finally:
        logger.removeHandler(handler)
    assert any(message.endswith("(1 thread)") for message in messages), messages


def test_the_adaptation_spec_leaves_wandb_off():
    from reid_tao.config.loader import load_config

    assert load_config(str(ROOT / "specs" / "adapt_cpu.yaml")).wandb.enable is False
