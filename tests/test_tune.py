"""`reid tune`: a study over spec fields on a carved validation split, pruning, resume, best_spec.yaml."""
import csv
import json
import os
import signal

import pytest
import yaml

from reid_tao.cli import main
from reid_tao.engine import tuning
from reid_tao.tasks import tune as tune_task

from helpers import make_market, tiny_overrides

SPACE = "tune.space={train.optim.base_lr: {log: [1.0e-4, 1.0e-2]}, dataset.re_prob: {range: [0.0, 0.5]}}"


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return make_market(tmp_path_factory.mktemp("tune_market"), train_ids=range(1, 9))


def tune_args(market, results, *extra):
    overrides = [item for item in tiny_overrides(market, results) if not item.startswith(("dataset.query",
                                                                                           "dataset.test"))]
    return ["tune", *overrides, "train.num_epochs=2", "tune.num_val_ids=2", "tune.trials=3", SPACE, *extra]


def trials_table(results):
    with open(results / "tune" / "trials.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_study_runs_writes_its_outputs_and_best_spec_trains(market, tmp_path, capsys):
    results = tmp_path / "res"
    assert main(tune_args(market, results, "tune.pruner=none")) == 0, capsys.readouterr().err
    out = results / "tune"
    rows = trials_table(results)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3 and [row["epochs"] for row in rows] == ["2"] * 3
    assert {row["folder"] for row in rows} == {"trial_000", "trial_001", "trial_002"}
    assert all(1e-4 <= float(row["train.optim.base_lr"]) <= 1e-2 for row in rows)
    # tune.spec_values_first: trial 0 is the spec's own values, the baseline (schema defaults here)
    assert float(rows[0]["train.optim.base_lr"]) == pytest.approx(3.5e-4) and float(rows[0]["dataset.re_prob"]) == 0.5
    # trials train on the carved split (2 held-out ids), never on the spec's own query/gallery
    split = json.loads((out / "val_split" / "split.json").read_text())
    assert len(split["val_ids"]) == 2
    trial_spec = yaml.safe_load((out / "trial_000" / "experiment.yaml").read_text())
    assert trial_spec["dataset"]["query_dataset_dir"] == str(out / "val_split" / "query")
    assert not list((out / "trial_000").glob("*.pth"))  # tune.keep_checkpoints=false
    assert (out / "tune.png").stat().st_size > 0 and (out / "study.db").is_file()
    statuses = [json.loads(line) for line in (out / "status.json").read_text().splitlines()]
    assert sum("trial" in line for line in statuses) == 3 and statuses[-1]["message"] == "Tune finished successfully."

    best = max(rows, key=lambda row: float(row["mAP"]))
    spec = yaml.safe_load((out / "best_spec.yaml").read_text())
    assert spec["train"]["optim"]["base_lr"] == pytest.approx(float(best["train.optim.base_lr"]), rel=1e-5)
    assert spec["dataset"]["train_dataset_dir"] == str(market / "bounding_box_train")
    assert main(["train", "-e", str(out / "best_spec.yaml"), f"results_dir={tmp_path / 'best'}",
                 "train.num_epochs=1"]) == 0, capsys.readouterr().err
    assert (tmp_path / "best" / "train" / "reid_model_latest.pth").is_file()


def _always_prune(seed, num_epochs):
    import optuna

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    return AlwaysPrune()


@pytest.mark.slow
def test_pruned_trials_stop_after_the_epoch_that_was_pruned(market, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(tuning.PRUNERS, "always", _always_prune)
    results = tmp_path / "res"
    assert main(tune_args(market, results, "tune.pruner=always", "tune.trials=2")) == 0, capsys.readouterr().err
    rows = trials_table(results)
    assert [row["state"] for row in rows] == ["PRUNED", "PRUNED"]
    assert [row["epochs"] for row in rows] == ["1", "1"]  # of train.num_epochs=2
    assert not (results / "tune" / "best_spec.yaml").exists()  # no complete trial, no best spec


@pytest.mark.slow
def test_interrupted_study_continues_without_repeating_finished_trials(market, tmp_path, capsys, monkeypatch):
    class InterruptTrialOne(tuning.ValidationReporter):
        fired = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if not InterruptTrialOne.fired and trainer.default_root_dir.endswith("trial_001"):
                InterruptTrialOne.fired = True
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written

    monkeypatch.setattr(tune_task, "ValidationReporter", InterruptTrialOne)
    results = tmp_path / "res"
    args = tune_args(market, results, "tune.pruner=none", "tune.trials=2")
    assert main(args) == 128 + signal.SIGINT
    assert (results / "tune" / "trial_001" / "reid_model_latest.pth").is_file()
    capsys.readouterr()

    assert main(args) == 0, capsys.readouterr().err
    rows = trials_table(results)
    finished = [row for row in rows if row["state"] == "COMPLETE"]
    assert sorted(row["folder"] for row in finished) == ["trial_000", "trial_001"]
    assert [row["state"] for row in rows if row["trial"] == "1"] == ["FAIL"]
    trial0_status = (results / "tune" / "trial_000" / "status.json").read_text()
    assert trial0_status.count('"STARTED"') == 1  # the finished trial did not run again
    assert "resuming from" in (results / "tune" / "trial_001" / "train.log").read_text()
    # a study with all its trials does nothing more
    assert main(args) == 0 and "nothing to run" in capsys.readouterr().out


def _study_and_params(space):
    import optuna
    from omegaconf import OmegaConf

    from reid_tao.config.loader import schema_config
    from reid_tao.config.search_space import parse_space

    config = OmegaConf.merge(schema_config(), {"dataset": {"re_prob": 0.3}, "model": {"backbone": "resnet_34"}})
    return optuna.create_study(direction="maximize"), config, parse_space(space)


def test_the_first_trial_trains_the_specs_own_values():
    from optuna.trial import TrialState

    study, config, params = _study_and_params({"dataset.re_prob": {"range": [0.0, 0.5]},
                                               "model.backbone": {"choice": ["resnet_18", "resnet_34"]}})
    tune_task._enqueue_spec_values(study, config, params)
    trial = study.ask()
    assert [tune_task._suggest(trial, param) for param in params] == [0.3, "resnet_34"]
    tune_task._enqueue_spec_values(study, config, params)  # a study with trials gets no second baseline
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 0


def test_spec_values_outside_the_space_or_switched_off_are_not_enqueued():
    study, config, params = _study_and_params({"dataset.re_prob": {"range": [0.4, 0.5]}})
    tune_task._enqueue_spec_values(study, config, params)  # 0.3 is outside [0.4, 0.5]
    assert not study.get_trials()
    config.tune.spec_values_first = False
    study, _, params = _study_and_params({"dataset.re_prob": {"range": [0.0, 0.5]}})
    tune_task._enqueue_spec_values(study, config, params)
    assert not study.get_trials()


def test_the_median_pruner_judges_no_trial_in_the_first_third_of_its_epochs():
    import optuna

    study = optuna.create_study(direction="maximize", pruner=tuning.PRUNERS["median"](0, 6))
    for finals in ([0.2, 0.4, 0.5], [0.3, 0.5, 0.6]):  # two finished trials: the median exists from epoch 0
        trial = study.ask()
        for epoch, value in enumerate(finals):
            trial.report(value, epoch)
        study.tell(trial, finals[-1])
    laggard = study.ask()
    verdicts = []
    for epoch in range(3):
        laggard.report(0.01, epoch)  # far below the median at every epoch
        verdicts.append(laggard.should_prune())
    assert verdicts == [False, False, True]  # 6 epochs: judged from epoch index 2
    assert tuning.median_warmup_epochs(2) == 1 and tuning.median_warmup_epochs(18) == 6


@pytest.mark.parametrize("space, expected", [
    ("{train.optim.weight_decy: {log: [1.0e-4, 1.0e-2]}}", "did you mean train.optim.weight_decay"),
    ("{dataset.re_prob: {uniform: [0.0, 0.5]}}", "give one of"),
    ("{train.optim.base_lr: {log: [0.0, 1.0e-2]}}", "log needs 0 < low < high"),
    ("{dataset.re_prob: {range: [0.5, 0.2]}}", "needs low < high"),
    ("{dataset.re_prob: {range: [0.0, 2.0]}}", "dataset.re_prob must be between 0 and 1"),
    ("{model.backbone: {choice: [resnet_18, resnet_19]}}", "'resnet_19' is not a valid value"),
    ("{results_dir: {choice: [a, b]}}", "cannot be searched"),
])
def test_a_bad_search_space_gets_one_line(market, tmp_path, capsys, space, expected):
    args = [arg for arg in tune_args(market, tmp_path / "res") if not arg.startswith("tune.space")]
    assert main([*args, f"tune.space={space}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tune.space." in err and expected in err, err
    assert not (tmp_path / "res" / "tune" / "study.db").exists()


def test_an_empty_search_space_gets_one_line(market, tmp_path, capsys):
    args = [arg for arg in tune_args(market, tmp_path / "res") if not arg.startswith("tune.space")]
    assert main(args) == 2
    assert "tune.space is empty" in capsys.readouterr().err
