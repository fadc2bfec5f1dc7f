"""`reid tune`: a study over spec fields on a carved validation split, pruning, resume, best_spec.yaml.

The slow tests train real trials; the others replace `train.run` by a stand-in (``fake_train``) that trains
nothing, so the study's own logic (folders, study.db, best_spec.yaml, logs) runs in seconds."""

import csv
import json
import logging
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from reid_tao.builders import default_space
from reid_tao.cli import main
from reid_tao.config.search_space import DEFAULT_SPACE, parse_space
from reid_tao.engine import tuning
from reid_tao.errors import DataError, Preempted
from reid_tao.tasks import tune as tune_task

from helpers import make_market, tiny_overrides

SPACE_FIELDS = {"train.optim.base_lr": {"log": [1.0e-4, 1.0e-2]}, "dataset.re_prob": {"range": [0.0, 0.5]}}
SPACE = "tune.space={train.optim.base_lr: {log: [1.0e-4, 1.0e-2]}, dataset.re_prob: {range: [0.0, 0.5]}}"


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return make_market(tmp_path_factory.mktemp("tune_market"), train_ids=range(1, 9))


def tune_args(market, results, *extra, space=SPACE):
    overrides = [
        item for item in tiny_overrides(market, results) if not item.startswith(("dataset.query", "dataset.test"))
    ]
    return [
        "tune",
        *overrides,
        "train.num_epochs=2",
        "tune.num_val_ids=2",
        "tune.trials=3",
        *([space] if space else []),
        *extra,
    ]


@pytest.fixture
def fake_train(monkeypatch):
    """train.run replaced by a stand-in that trains nothing: it writes the trial's experiment.yaml and a
    checkpoint into the trial's folder, logs a line every trial repeats, and reports dataset.re_prob as the
    metric of every epoch. Returns the trial configs it was given, in order."""
    calls = []

    def run(config, extra_callbacks=()):
        calls.append(config)
        folder = Path(config.train.results_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "experiment.yaml").write_text(OmegaConf.to_yaml(config))
        (folder / "reid_model_latest.pth").write_bytes(b"stand-in")
        logging.getLogger("reid_tao.data.datamodule").info("dataset summary\nsubset ids\ntrain 6")
        reporter = next(callback for callback in extra_callbacks if isinstance(callback, tuning.ValidationReporter))
        for epoch in range(config.train.num_epochs):
            reporter.last = float(config.dataset.re_prob)
            if reporter.report(reporter.last, epoch):
                reporter.pruned_at = epoch
                break

    monkeypatch.setattr(tune_task.train, "run", run)
    return calls


def trials_table(results):
    with open(results / "tune" / "trials.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_study_runs_writes_its_outputs_and_best_spec_trains(market, tmp_path, capsys):
    """A spec without tune.space: the default space is searched, with real training."""
    results = tmp_path / "res"
    assert main(tune_args(market, results, "tune.pruner=none", space=None)) == 0, capsys.readouterr().err
    console = capsys.readouterr().out
    out = results / "tune"
    rows = trials_table(results)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3 and [row["epochs"] for row in rows] == ["2"] * 3
    assert {row["folder"] for row in rows} == {"trial_000", "trial_001", "trial_002"}
    searched = [name for name in rows[0] if name.startswith(("train.", "dataset.", "model."))]
    assert searched == [*list(DEFAULT_SPACE)[:-1], "train.optim.warmup_iters"]  # linear warm-up (schema's)
    assert all(1e-4 <= float(row["train.optim.base_lr"]) <= 4e-3 for row in rows)
    # tune.spec_values_first: trial 0 is the spec's own values, the baseline (schema defaults here)
    assert float(rows[0]["train.optim.base_lr"]) == pytest.approx(3.5e-4) and float(rows[0]["dataset.re_prob"]) == 0.5
    # the console shows the dataset table and the best trial once, not once a trial
    assert console.count("dataset summary") == 1 and console.count("best trial") == 1, console
    assert "searching the default space" in console and "train.optim.weight_decay: {log:" in console
    assert all((out / f"trial_{n:03d}" / "train.log").read_text().count("dataset summary") == 1 for n in range(3))
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
    assert (
        main(["train", "-e", str(out / "best_spec.yaml"), f"results_dir={tmp_path / 'best'}", "train.num_epochs=1"])
        == 0
    ), capsys.readouterr().err
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

    study, config, params = _study_and_params(
        {"dataset.re_prob": {"range": [0.0, 0.5]}, "model.backbone": {"choice": ["resnet_18", "resnet_34"]}}
    )
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


@pytest.mark.parametrize(
    "space, expected",
    [
        ("{train.optim.weight_decy: {log: [1.0e-4, 1.0e-2]}}", "did you mean train.optim.weight_decay"),
        ("{dataset.re_prob: {uniform: [0.0, 0.5]}}", "give one of"),
        ("{train.optim.base_lr: {log: [0.0, 1.0e-2]}}", "log needs 0 < low < high"),
        ("{dataset.re_prob: {range: [0.5, 0.2]}}", "needs low < high"),
        ("{dataset.re_prob: {range: [0.0, 2.0]}}", "dataset.re_prob must be between 0 and 1"),
        ("{model.backbone: {choice: [resnet_18, resnet_19]}}", "'resnet_19' is not a valid value"),
        ("{results_dir: {choice: [a, b]}}", "cannot be searched"),
    ],
)
def test_a_bad_search_space_gets_one_line(market, tmp_path, capsys, space, expected):
    args = [arg for arg in tune_args(market, tmp_path / "res") if not arg.startswith("tune.space")]
    assert main([*args, f"tune.space={space}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tune.space." in err and expected in err, err
    assert not (tmp_path / "res" / "tune" / "study.db").exists()


def test_without_a_space_the_default_space_is_searched_and_logged(market, tmp_path, capsys, fake_train):
    results = tmp_path / "res"
    assert main(tune_args(market, results, "tune.pruner=none", "tune.trials=4", space=None)) == 0, (
        capsys.readouterr().err
    )
    console = capsys.readouterr().out
    expected = {**DEFAULT_SPACE, "train.optim.warmup_iters": {"int": [0, 1]}}  # linear warm-up, 2 epochs
    del expected["train.optim.warmup_epochs"]
    assert "tune.space is not set: searching the default space" in console
    assert all(f"{path}: {{{next(iter(spec))}:" in console for path, spec in expected.items())
    params = parse_space(expected)
    for config in fake_train:
        for param in params:
            assert tune_task._in_space(param, OmegaConf.select(config, param.path)), (param, config)
    assert len({float(config.train.optim.weight_decay) for config in fake_train}) == 4
    best = yaml.safe_load((results / "tune" / "best_spec.yaml").read_text())
    assert best["tune"]["space"] == {}  # best_spec.yaml keeps the spec's (empty) space
    assert console.count("dataset summary") == 1 and console.count("best trial") == 1, console


def test_an_explicit_space_is_searched_as_written(market, tmp_path, capsys, fake_train):
    assert main(tune_args(market, tmp_path / "res", "tune.pruner=none", "tune.trials=2")) == 0
    assert "default space" not in capsys.readouterr().out
    rows = trials_table(tmp_path / "res")
    assert [name for name in rows[0] if "." in name] == list(SPACE_FIELDS)
    assert all(config.train.optim.weight_decay == 5e-4 for config in fake_train)  # not searched


def _config(**sections):
    from reid_tao.config.loader import schema_config

    return OmegaConf.merge(schema_config(), sections)


def test_the_default_space_leaves_out_what_the_spec_does_not_train_and_fits_the_warm_up():
    full = default_space(_config(train={"num_epochs": 120}))
    assert list(full) == [*list(DEFAULT_SPACE)[:-1], "train.optim.warmup_iters"]
    assert full["train.optim.warmup_iters"] == {"int": [0, 10]}
    cosine = default_space(_config(train={"num_epochs": 6, "optim": {"warmup_method": "cosine"}}))
    assert cosine["train.optim.warmup_epochs"] == {"int": [0, 3]} and "train.optim.warmup_iters" not in cosine
    assert "train.optim.warmup_iters" not in default_space(_config(train={"num_epochs": 1}))
    no_triplet = default_space(_config(dataset={"sampler": "softmax"}))
    assert "train.optim.triplet_loss_margin" not in no_triplet and "model.label_smooth" in no_triplet
    assert "train.optim.triplet_loss_margin" not in default_space(_config(model={"no_margin": True}))
    no_id = default_space(_config(dataset={"sampler": "triplet"}))
    assert "model.label_smooth" not in no_id and "train.optim.triplet_loss_margin" in no_id
    parse_space(full)  # a valid space


def test_reid_tune_help_shows_the_default_space(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    assert "default search space" in out and "train.optim.base_lr: {log: [0.0001, 0.004]}" in out


# --- study.db is data: folders from numbers, best_spec.yaml from this study's space only ---


def _crafted_study(results, direction="maximize"):
    """A study.db at results/tune/study.db as someone else could have written it (Optuna's own API)."""
    import optuna

    (results / "tune").mkdir(parents=True)
    return optuna.create_study(
        study_name=tune_task.STUDY_NAME, direction=direction, storage=f"sqlite:///{results / 'tune' / 'study.db'}"
    )


def _space_distributions():
    """What `reid tune` records for SPACE_FIELDS."""
    from optuna.distributions import FloatDistribution

    return {
        "train.optim.base_lr": FloatDistribution(1e-4, 1e-2, log=True),
        "dataset.re_prob": FloatDistribution(0, 0.5),
    }


def test_a_trial_folder_comes_from_its_number_never_from_a_path_in_study_db(market, tmp_path, capsys, fake_train):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.pth").write_bytes(b"keep")
    results = tmp_path / "res"
    trial = _crafted_study(results).ask(_space_distributions())  # left RUNNING: reid tune continues it
    trial.set_user_attr("folder", str(outside))  # the path the study recorded before
    assert main(tune_args(market, results, "tune.pruner=none", "tune.trials=2")) == 0, capsys.readouterr().err
    assert sorted(path.name for path in outside.iterdir()) == ["precious.pth"]
    assert (outside / "precious.pth").read_bytes() == b"keep"
    folders = [Path(config.train.results_dir) for config in fake_train]
    assert folders[0] == results / "tune" / "trial_000"  # the interrupted trial 0 continues in its own folder
    assert all(folder.parent == results / "tune" and folder.name.startswith("trial_") for folder in folders)


@pytest.mark.parametrize("crafted", ["continues_a_path", "continues_a_later_trial", "number_is_text"])
def test_a_crafted_trial_number_in_study_db_is_one_line(market, tmp_path, capsys, fake_train, crafted):
    results = tmp_path / "res"
    study = _crafted_study(results)
    trial = study.ask(_space_distributions())
    trial.set_user_attr("interrupted", True)
    if crafted == "continues_a_path":
        trial.set_user_attr(tune_task.CONTINUES, "../../outside")
    elif crafted == "continues_a_later_trial":
        trial.set_user_attr(tune_task.CONTINUES, 5)
    else:
        with sqlite3.connect(results / "tune" / "study.db") as db:
            db.execute("UPDATE trials SET number = '../../outside'")
    assert main(tune_args(market, results, "tune.pruner=none", "tune.trials=2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "study.db" in err, err
    assert ("not an earlier trial" if crafted == "continues_a_later_trial" else "not a trial number") in err, err
    assert not fake_train and not (tmp_path / "outside").exists()


def _complete_trial(study, params, value=0.9):
    import optuna

    distributions = _space_distributions()
    for path, choice in params.items():
        distributions.setdefault(path, optuna.distributions.CategoricalDistribution([choice]))
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))


@pytest.mark.parametrize(
    "crafted, expected",
    [
        ("another_space", "another search space"),
        ("value_outside_the_range", "outside tune.space"),
        ("another_direction", "another study"),
        ("another_metric", "not of tune.metric=mAP"),
        ("not_sqlite", "not an SQLite database"),
        ("sqlite_but_no_study", "cannot be read as an Optuna study"),
    ],
)
def test_study_db_of_another_study_or_edited_never_reaches_best_spec(
    market, tmp_path, capsys, fake_train, crafted, expected
):
    results = tmp_path / "res"
    db = results / "tune" / "study.db"
    if crafted == "not_sqlite":
        db.parent.mkdir(parents=True)
        db.write_text("results of my own\n")
    elif crafted == "sqlite_but_no_study":
        db.parent.mkdir(parents=True)
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE studies (x TEXT)")  # Optuna's table name, another schema
    elif crafted == "another_direction":
        _complete_trial(
            _crafted_study(results, direction="minimize"), {"train.optim.base_lr": 1e-3, "dataset.re_prob": 0.1}
        )
    else:
        study = _crafted_study(results)
        if crafted == "another_metric":
            study.set_user_attr("metric", "rank1")
        weights = {"model.trust_weights_file": True, "model.pretrained_model_path": str(tmp_path / "evil.pth")}
        _complete_trial(
            study,
            {"train.optim.base_lr": 1e-3, "dataset.re_prob": 0.1, **(weights if crafted == "another_space" else {})},
        )
        if crafted == "value_outside_the_range":
            with sqlite3.connect(db) as connection:
                connection.execute("UPDATE trial_params SET param_value = 5.0 WHERE param_name = 'train.optim.base_lr'")
    assert main(tune_args(market, results, "tune.pruner=none", "tune.trials=1")) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "study.db" in err and expected in err, err
    assert "Traceback" not in out + err and not fake_train
    assert not (results / "tune" / "best_spec.yaml").exists()


def test_best_spec_takes_only_the_study_space_values(market, tmp_path, capsys, fake_train):
    results = tmp_path / "res"
    _complete_trial(_crafted_study(results), {"train.optim.base_lr": 2e-3, "dataset.re_prob": 0.25})
    assert main(tune_args(market, results, "tune.pruner=none", "tune.trials=1")) == 0, capsys.readouterr().err
    best = yaml.safe_load((results / "tune" / "best_spec.yaml").read_text())
    spec = yaml.safe_load((results / "tune" / "experiment.yaml").read_text())
    assert best["train"]["optim"]["base_lr"] == 2e-3 and best["dataset"]["re_prob"] == 0.25
    best["train"]["optim"]["base_lr"], best["dataset"]["re_prob"] = (
        spec["train"]["optim"]["base_lr"],
        spec["dataset"]["re_prob"],
    )
    assert best == spec  # nothing else differs from the spec


# --- one line, no traceback ---


@pytest.mark.parametrize(
    "space, expected",
    [
        ("{train.optim.lr_steps: {choice: [[1], [2]]}}", "holds a list or mapping"),
        ("{model.backbone: {choice: [[resnet_18], resnet_34]}}", "each choice must be a single value"),
        ("{train.num_epochs: {range: [1, 3]}}", "use {int: [low, high]}"),
        ("{dataset.num_instances: {log: [2, 4]}}", "takes int values"),
        ("{model.gem_pooling: {int: [0, 1]}}", "use {choice: [...]}"),
        ("{train.optim.base_lr: {log: [1.0e-4, 1.0e300]}}", "train.optim.base_lr must be > 0 and <= 10"),
    ],
)
def test_a_space_that_cannot_be_drawn_is_one_line_before_any_trial(
    market, tmp_path, capsys, fake_train, space, expected
):
    assert main(tune_args(market, tmp_path / "res", space=f"tune.space={space}")) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "tune.space." in err and expected in err, err
    assert "Traceback" not in out + err and not fake_train


@pytest.mark.parametrize(
    "field, rule",
    [
        ("base_lr", "> 0 and <= 10"),
        ("center_lr", "> 0 and <= 10"),
        ("gamma", "> 0 and <= 10"),
        ("warmup_factor", "> 0 and <= 10"),
        ("weight_decay", "between 0 and 10"),
        ("bias_lr_factor", "between 0 and 10"),
    ],
)
def test_rates_past_their_bound_are_one_line_in_train(market, tmp_path, capsys, field, rule):
    """1e300 passed "> 0" and then overflowed float32 in the optimiser step: a traceback after the data loaded."""
    assert main(["train", *tiny_overrides(market, tmp_path / "res"), f"train.optim.{field}=1e300"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"reid train: error: train.optim.{field} must be {rule}, got 1e+300", err


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("failure", ["error", "stopped"])
def test_a_failed_or_stopped_trial_is_one_line_without_optunas_traceback(
    market, tmp_path, capsys, monkeypatch, failure
):
    def run(config, extra_callbacks=()):
        if failure == "error":
            raise DataError("the trial's data went away")
        raise Preempted("train stopped by SIGTERM; run the same command again", signal.SIGTERM)

    monkeypatch.setattr(tune_task.train, "run", run)
    optuna_log = _Records()
    logging.getLogger("optuna").addHandler(optuna_log)
    try:
        code = main(tune_args(market, tmp_path / "res"))
    finally:
        logging.getLogger("optuna").removeHandler(optuna_log)
    out, err = capsys.readouterr()
    assert code == (2 if failure == "error" else 128 + signal.SIGTERM)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, err
    assert not [message for message in optuna_log.messages if "failed" in message], optuna_log.messages


def test_the_validation_split_error_names_the_tune_field(market, tmp_path, capsys, fake_train):
    assert main(tune_args(market, tmp_path / "res", "tune.num_val_ids=7")) == 2
    err = capsys.readouterr().err
    assert "tune.num_val_ids=7 leaves fewer than 2 training identities" in err and "--num-val-ids" not in err, err


# --- the split, the drawn values and the searchable fields ---


def test_trials_train_on_the_split_training_ids_never_on_the_validation_ids(market, tmp_path, capsys, fake_train):
    from reid_tao.data.market import scan_market_folder

    assert main(tune_args(market, tmp_path / "res", "tune.pruner=none", "tune.trials=1")) == 0
    val_ids = set(json.loads((tmp_path / "res" / "tune" / "val_split" / "split.json").read_text())["val_ids"])
    config = fake_train[0]

    def ids(folder):
        return {record.pid for record in scan_market_folder(folder, folder)}

    trained = ids(config.dataset.train_dataset_dir)
    assert trained and not trained & val_ids and trained | val_ids == set(range(1, 9))
    assert ids(config.dataset.query_dataset_dir) == ids(config.dataset.test_dataset_dir) == val_ids


@pytest.mark.parametrize(
    "spec, drawn",
    [
        ({"int": [1, 3]}, {1, 2, 3}),
        ({"choice": [8, 16, 32]}, {8, 16, 32}),
    ],
)
def test_every_value_of_an_int_range_or_choice_is_drawn_ends_included(spec, drawn):
    import optuna

    param = parse_space({"dataset.num_instances": spec})[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = set()
    for _ in range(60):
        trial = study.ask()
        values.add(tune_task._suggest(trial, param))
        study.tell(trial, 0.0)
    assert values == drawn


def test_the_distribution_checked_against_study_db_is_the_one_drawn_from():
    import optuna

    params = parse_space(
        {**SPACE_FIELDS, "dataset.num_instances": {"int": [2, 4]}, "model.label_smooth": {"choice": [True, False]}}
    )
    study = optuna.create_study()
    trial = study.ask()
    for param in params:
        tune_task._suggest(trial, param)
    study.tell(trial, 0.0)
    assert study.trials[0].distributions == {param.path: tune_task._distribution(param) for param in params}


@pytest.mark.parametrize(
    "field",
    [
        "tune.trials",
        "evaluate.batch_size",
        "inference.batch_size",
        "export.opset",
        "wandb.enable",
        "results_dir",
        "dataset.train_dataset_dir",
        "train.resume_training_checkpoint_path",
    ],
)
def test_fields_outside_training_cannot_be_searched(field):
    from reid_tao.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be searched"):
        parse_space({field: {"choice": [1, 2]}})


# --- tune.png ---


def test_tune_png_has_whole_trial_ticks_and_log_labels_that_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from reid_tao.tasks.tune_report import TrialRow, study_figure

    space = {
        "train.optim.base_lr": {"log": [5.0e-4, 4.0e-3]},
        "train.optim.weight_decay": {"log": [1e-5, 1e-1]},
        "dataset.num_instances": {"int": [2, 4]},
    }
    params = parse_space(space)
    rows = [
        TrialRow(
            number,
            "COMPLETE",
            0.5 + number / 10,
            2,
            1.0,
            f"trial_{number:03d}",
            {"train.optim.base_lr": lr, "train.optim.weight_decay": decay, "dataset.num_instances": k},
        )
        for number, (lr, decay, k) in enumerate([(6e-4, 2e-5, 2), (1.1e-3, 3e-3, 3), (3.9e-3, 9e-2, 4)])
    ]
    figure = study_figure(rows, params, "mAP", maximize=True)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    trials, *fields = figure.axes
    for ax in (trials, fields[2]):
        low, high = ax.get_xlim()
        assert all(float(tick).is_integer() for tick in ax.get_xticks() if low <= tick <= high), ax.get_xticks()
    for ax in figure.axes:
        labels = [
            label
            for label in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
            if label.get_visible() and label.get_text()
        ]
        labels = [label for label in labels if ax.get_xlim()[0] <= label.get_position()[0] <= ax.get_xlim()[1]]
        assert len(labels) >= 2, ax.get_title()
        boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda box: box.x0)
        assert all(left.x1 <= right.x0 for left, right in zip(boxes, boxes[1:])), (
            ax.get_title(),
            [lb.get_text() for lb in labels],
        )
