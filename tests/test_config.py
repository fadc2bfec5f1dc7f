"""Spec loading: TAO specs load unchanged, overrides, and one-line errors for bad input."""

import textwrap

import pytest
from omegaconf import OmegaConf

from reid_tao.builders import load_experiment
from reid_tao.config.loader import task_results_dir
from reid_tao.errors import ConfigError

TAO_EXAMPLE = """
results_dir: "/path/to/experiment_results"
encryption_key: nvidia_tao
model:
  backbone: resnet_50
  last_stride: 1
  pretrain_choice: imagenet
  pretrained_model_path: "/path/to/pretrained_model.pth"
  input_channels: 3
  input_width: 128
  input_height: 256
  neck: bnneck
  feat_dim: 256
  neck_feat: after
  metric_loss_type: triplet
  with_center_loss: False
  with_flip_feature: False
  label_smooth: True
dataset:
  train_dataset_dir: "/path/to/train_dataset_dir"
  test_dataset_dir: "/path/to/test_dataset_dir"
  query_dataset_dir: "/path/to/query_dataset_dir"
  num_classes: 751
  batch_size: 64
  val_batch_size: 128
  num_workers: 1
  pixel_mean: [0.485, 0.456, 0.406]
  pixel_std: [0.226, 0.226, 0.226]
  padding: 10
  prob: 0.5
  re_prob: 0.5
  sampler: softmax_triplet
  num_instances: 4
re_ranking:
  re_ranking: True
  k1: 20
  k2: 6
  lambda_value: 0.3
train:
  results_dir: "${results_dir}/train"
  optim:
    name: Adam
    lr_monitor: val_loss
    steps: [40, 70]
    gamma: 0.1
    bias_lr_factor: 1
    weight_decay: 0.0005
    weight_decay_bias: 0.0005
    warmup_factor: 0.01
    warmup_iters: 10
    warmup_method: linear
    base_lr: 0.00035
    momentum: 0.9
    center_loss_weight: 0.0005
    center_lr: 0.5
    triplet_loss_margin: 0.3
  num_epochs: 10
  checkpoint_interval: 5
  validation_interval: 5
  seed: 1234
"""


def write_spec(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_tao_example_spec_loads_unchanged(tmp_path):
    config = load_experiment(write_spec(tmp_path, TAO_EXAMPLE))
    assert config.train.optim.lr_steps == [40, 70]  # TAO's `steps` spelling
    assert config.train.results_dir == "/path/to/experiment_results/train"  # interpolation resolved
    assert config.re_ranking.re_ranking is True
    assert config.dataset.num_workers == 1
    assert config.train.checkpoint_interval == 5
    # untouched fields keep TAO's defaults
    assert config.model.gem_pooling is False and config.train.optim.large_fc_lr is False
    assert str(task_results_dir(config, "train")) == "/path/to/experiment_results/train"
    assert str(task_results_dir(config, "evaluate")) == "/path/to/experiment_results/evaluate"


def test_defaults_match_tao():
    config = load_experiment(None)
    assert config.model.backbone == "resnet_50" and config.model.feat_dim == 256
    assert config.dataset.batch_size == 64 and config.dataset.num_instances == 4
    assert list(config.dataset.pixel_std) == [0.226, 0.226, 0.226]
    assert config.train.optim.name == "Adam" and config.train.optim.base_lr == pytest.approx(0.00035)
    assert config.re_ranking.k1 == 20 and config.re_ranking.k2 == 6


def test_overrides_use_hydra_grammar(tmp_path):
    config = load_experiment(
        write_spec(tmp_path, TAO_EXAMPLE),
        [
            "train.num_epochs=3",
            "train.optim.lr_steps=[5,8]",
            "model.pretrained_model_path=null",
            "train.optim.steps=[1,2]",
            "dataset.pixel_mean=[0.5,0.5,0.5]",
        ],
    )
    assert config.train.num_epochs == 3
    assert config.train.optim.lr_steps == [1, 2]  # the alias applied last wins
    assert config.model.pretrained_model_path is None
    assert list(config.dataset.pixel_mean) == [0.5, 0.5, 0.5]
    assert OmegaConf.is_readonly(config)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.backbon=resnet_18"], "did you mean model.backbone"),
        (["train.optim.base_rl=0.1"], "did you mean train.optim.base_lr"),
        (["model.last_stride=abc"], "model.last_stride"),
        (["model.backbone=resnet_42"], "model.backbone='resnet_42' is not supported"),
        (["model.neck=foo"], "model.neck"),
        (["model.neck_feat=middle"], "model.neck_feat"),
        (["model.metric_loss_type=quadruplet"], "model.metric_loss_type"),
        (["dataset.sampler=random"], "dataset.sampler"),
        (["dataset.batch_size=30"], "divisible by dataset.num_instances=4"),
        (["model.jpm=true"], "model.jpm is not supported"),
        (["model.id_loss_type=arcface"], "model.id_loss_type"),
        (["train.checkpoint_interval_unit=hour"], "train.checkpoint_interval_unit"),
        (["train.checkpointer.monitor=val_acc"], "did you mean"),
        (["train.checkpointer.mode=best"], "train.checkpointer.mode"),
        (["evaluate.batch_size=0"], "evaluate.batch_size"),
        (["train.optim.lr_steps=[70,40]"], "strictly increasing"),
        (["train.precision=64"], "train.precision"),
        (["evaluate.precision=fp32"], "evaluate.precision"),
        (["inference.precision=bf16"], "inference.precision"),
        (["dataset.prob=1.5"], "dataset.prob"),
        (["model.drop_path=0.2"], "Swin backbones only"),
        (["+model.extra=1"], "only section.key=value"),
        (["model.backbone"], "cannot parse override"),
        (["model.pretrain_choice=self"], "pretrained_model_path"),
    ],
)
def test_bad_overrides_give_one_clear_line(overrides, expected):
    with pytest.raises(ConfigError) as error:
        load_experiment(None, overrides)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_spec_names_file_and_suggests(tmp_path):
    spec = write_spec(tmp_path, "model:\n  feat_dimm: 512\n")
    with pytest.raises(ConfigError, match=r"unknown field model.feat_dimm in .*spec.yaml; did you mean model.feat_dim"):
        load_experiment(spec)


def test_wrong_type_in_spec(tmp_path):
    spec = write_spec(tmp_path, "dataset:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match="dataset.batch_size"):
        load_experiment(spec)


def test_missing_and_broken_spec_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot parse spec file"):
        load_experiment(write_spec(tmp_path, "model: [unclosed\n"))


def test_conflicting_aliases(tmp_path):
    spec = write_spec(tmp_path, "train:\n  optim:\n    steps: [1, 2]\n    lr_steps: [3, 4]\n")
    with pytest.raises(ConfigError, match="same field"):
        load_experiment(spec)


def test_swin_needs_sizes_divisible_by_32():
    with pytest.raises(ConfigError, match="divisible by 32"):
        load_experiment(None, ["model.backbone=swin_tiny_patch4_window7_224", "model.input_width=100"])
    config = load_experiment(None, ["model.backbone=swin_tiny_patch4_window7_224", "model.drop_path=0.2"])
    assert config.model.drop_path == pytest.approx(0.2)


SPECS = sorted((__import__("pathlib").Path(__file__).parent.parent / "specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_shipped_specs_load(spec):
    config = load_experiment(str(spec))
    assert config.model.backbone and config.train.num_epochs >= 1
