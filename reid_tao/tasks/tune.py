"""`reid tune`: a hyperparameter search over spec fields (Optuna), on a validation split of the training
identities, with per-epoch pruning; the study lives in an SQLite file, so re-running continues it.

Outputs in results_dir/tune/: study.db, val_split/ (the carved validation root), trial_NNN/ (each trial's
training folder: experiment.yaml, status.json, logs), trials.csv, tune.png, best_spec.yaml (the spec with
the best trial's values, runnable with `reid train -e`), and status.json with a line per trial.

study.db is read as data that may have been crafted: a trial's folder is derived from its number (never a
path stored in the database), and only values of this study's own tune.space, inside their ranges and valid
for their fields, reach a trial or best_spec.yaml; a database of another study is refused in one line.
"""

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reid_tao.builders import default_space, study_arguments, trial_config
from reid_tao.config.search_space import Param, parse_space, space_text
from reid_tao.data.val_split import GALLERY_FOLDER, QUERY_FOLDER, SPLIT_FILE, TRAIN_FOLDER, make_val_split
from reid_tao.engine.devices import plan_devices
from reid_tao.engine.metric_names import metric_modes
from reid_tao.engine.status import RUNNING, StatusFile
from reid_tao.engine.tuning import ValidationReporter
from reid_tao.errors import ConfigError, DataError, Preempted, first_line
from reid_tao.io.atomic import atomic_write_text
from reid_tao.tasks import train
from reid_tao.tasks.common import prepare_task, reported
from reid_tao.tasks.tune_report import TrialRow, plot_study, write_trials_csv

log = logging.getLogger("reid_tao.tune")
STUDY_FILE, STUDY_NAME = "study.db", "reid_tune"
SPLIT_DIR = "val_split"
NO_PERIODIC_CHECKPOINTS = 1_000_000  # trials keep only reid_model_latest.pth (to resume an interrupted trial)
CONTINUES = "continues"  # user attribute of a requeued trial: the number of the interrupted trial it resumes
SQLITE_HEADER = b"SQLite format 3\x00"
ANOTHER_STUDY = "set another results_dir (or move it away to start a new study there)"


def _trial_folder(results: Path, number: int) -> Path:
    return results / f"trial_{number:03d}"


def _trial_number(value: Any, what: str) -> int:
    """A trial number read from study.db (SQLite stores any type in any column): a non-negative int, or one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(
            f"{STUDY_FILE}: {what} is {value!r}, not a trial number; the database was not written by "
            f"reid tune: {ANOTHER_STUDY}"
        )
    return value


def _folder_number(trial) -> int:
    """The number whose trial_NNN folder this trial trains in: its own, or that of the interrupted trial it
    continues (a number, never a path from the database)."""
    number = _trial_number(trial.number, "a trial's number")
    if CONTINUES not in trial.user_attrs:
        return number
    source = _trial_number(trial.user_attrs[CONTINUES], f"the trial that trial {number} continues")
    if source >= number:
        raise DataError(
            f"{STUDY_FILE}: trial {number} continues trial {source}, which is not an earlier trial; "
            f"the database was not written by reid tune: {ANOTHER_STUDY}"
        )
    return source


def _check_ends(base: DictConfig, params: list[Param]) -> None:
    """Every end of a range and every choice must be a valid value of its field (its own rules say why not)."""
    for param in params:
        for value in param.values:
            try:
                trial_config(base, {param.path: value})
            except ConfigError as error:
                raise ConfigError(f"tune.space.{param.path}: {value!r} is not a valid value: {error}") from None
            except Exception as error:  # a value of the wrong type for the field (OmegaConf's validation)
                raise ConfigError(f"tune.space.{param.path}: {value!r} is not a valid value ({error})") from None


def _validation_root(config: DictConfig, results: Path) -> tuple[str, str, str]:
    """(train, query, gallery) folders: tune.query/test_dataset when given, else a split carved (once) from the
    training identities into results/val_split."""
    tune, data = config.tune, config.dataset
    if not data.train_dataset_dir:
        raise ConfigError("dataset.train_dataset_dir is not set; point it to the training folder to tune on")
    if bool(tune.query_dataset) != bool(tune.test_dataset):
        raise ConfigError(
            "set both tune.query_dataset and tune.test_dataset, or neither (then a validation split "
            "is carved from the training identities)"
        )
    if tune.query_dataset:
        return data.train_dataset_dir, tune.query_dataset, tune.test_dataset
    train_dir = Path(data.train_dataset_dir)
    split = results / SPLIT_DIR
    if not (split / SPLIT_FILE).is_file():
        if train_dir.name != TRAIN_FOLDER:
            raise ConfigError(
                f"dataset.train_dataset_dir={train_dir} is not a Market-1501 {TRAIN_FOLDER}/ folder, so "
                "no validation split can be carved from it; set tune.query_dataset and "
                "tune.test_dataset to validation folders of your own"
            )
        made = make_val_split(
            train_dir.parent, split, num_val_ids=tune.num_val_ids, seed=tune.seed, num_val_ids_name="tune.num_val_ids"
        )
        log.info(
            "validation split (tune.num_val_ids=%d, tune.seed=%d) in %s:\n%s",
            tune.num_val_ids,
            tune.seed,
            split,
            made["summary"],
        )
    return str(split / TRAIN_FOLDER), str(split / QUERY_FOLDER), str(split / GALLERY_FOLDER)


def _trial_base(config: DictConfig, folders: tuple[str, str, str]) -> DictConfig:
    train_dir, query, gallery = folders
    return trial_config(
        config,
        {
            "dataset.train_dataset_dir": train_dir,
            "dataset.query_dataset_dir": query,
            "dataset.test_dataset_dir": gallery,
            "train.validation_interval": 1,  # pruning and the objective read the metric of every epoch
            "train.checkpoint_interval": NO_PERIODIC_CHECKPOINTS,
            "train.checkpoint_interval_unit": "epoch",
            "train.checkpointer.enable_topk": False,
            "train.resume_training_checkpoint_path": None,
            "wandb.enable": False,
        },
    )


def _distribution(param: Param):
    """The Optuna distribution that _suggest draws ``param`` from (what study.db records for each trial)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    low, high = param.values[0], param.values[-1]
    if param.kind == "choice":
        return CategoricalDistribution(list(param.values))
    if param.kind == "int":
        return IntDistribution(low, high)
    return FloatDistribution(low, high, log=param.kind == "log")


def _suggest(trial, param: Param):
    low, high = param.values[0], param.values[-1]
    if param.kind == "log":
        return trial.suggest_float(param.path, low, high, log=True)
    if param.kind == "range":
        return trial.suggest_float(param.path, low, high)
    if param.kind == "int":
        return trial.suggest_int(param.path, low, high)
    return trial.suggest_categorical(param.path, list(param.values))


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of the same kind (True is not 1; 1 and 1.0 are the same number)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b


def _in_space(param: Param, value: Any) -> bool:
    if param.kind == "choice":
        return any(_same_value(value, option) for option in param.values)
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and param.values[0] <= value <= param.values[-1]
        and (param.kind != "int" or float(value).is_integer())
    )


def _space_values(number: int, values: Mapping[str, Any], params: list[Param]) -> dict[str, Any]:
    """A trial's values from study.db, only when they are exactly this study's fields, each inside its range."""
    wanted = [param.path for param in params]
    if sorted(values) != sorted(wanted):
        raise DataError(
            f"{STUDY_FILE}: trial {number} holds values of {', '.join(sorted(values)) or 'no field'}, "
            f"not of tune.space ({', '.join(wanted)}): it is another study; {ANOTHER_STUDY}"
        )
    outside = [f"{param.path}={values[param.path]!r}" for param in params if not _in_space(param, values[param.path])]
    if outside:
        raise DataError(
            f"{STUDY_FILE}: trial {number} holds values outside tune.space ({', '.join(outside)}); "
            f"the database was changed by another tool: {ANOTHER_STUDY}"
        )
    return {path: values[path] for path in wanted}


def _open_study(path: Path, config: DictConfig, params: list[Param], maximize: bool):
    """The study in ``path`` (created when missing), refused in one line when it is not an SQLite file, not an
    Optuna study, or another study: another direction, metric or search space."""
    import optuna

    tune = config.tune
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DataError(f"{path} is not a regular file; {ANOTHER_STUDY}")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        header = b""
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror or error})") from None
    if header and header != SQLITE_HEADER:
        raise DataError(f"{path} is not an SQLite database, so not a study of reid tune; {ANOTHER_STUDY}")
    try:
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=f"sqlite:///{path.absolute()}",
            load_if_exists=True,
            direction="maximize" if maximize else "minimize",
            **study_arguments(config),
        )
        directions = [direction.name.lower() for direction in study.directions]
        trials = study.get_trials(deepcopy=False)
        metric = study.user_attrs.get("metric")
    except Exception as error:  # sqlalchemy's or Optuna's, on a database that is not a readable study
        raise DataError(
            f"{path} cannot be read as an Optuna study ({type(error).__name__}: "
            f"{first_line(error, 200)}); {ANOTHER_STUDY}"
        ) from None
    wanted = "maximize" if maximize else "minimize"
    if directions != [wanted]:
        raise ConfigError(
            f"{path} holds a study that {'/'.join(directions)}s its metric, and tune.metric="
            f"{tune.metric} is to {wanted}: it is another study; {ANOTHER_STUDY}"
        )
    if metric is None:  # a new study (or one from before the metric was recorded)
        study.set_user_attr("metric", tune.metric)
    elif metric != tune.metric:
        raise ConfigError(f"{path} holds a study of {metric!r}, not of tune.metric={tune.metric}; {ANOTHER_STUDY}")
    distributions = {param.path: _distribution(param) for param in params}
    for trial in trials:
        _folder_number(trial)
        for name, distribution in trial.distributions.items():
            if distributions.get(name) != distribution:
                raise ConfigError(
                    f"{path} holds trials of another search space (trial {trial.number}: {name} "
                    f"{distribution}), not of this tune.space; {ANOTHER_STUDY}"
                )
    return study


def _requeue_interrupted(study, params: list[Param], results: Path) -> None:
    """A trial stopped by a signal (or a killed process) runs again with the same values in the same folder,
    where its training resumes from reid_model_latest.pth."""
    from optuna.trial import TrialState

    recorded = study.user_attrs.get("requeued", [])
    requeued = {number for number in recorded if isinstance(number, int)} if isinstance(recorded, list) else set()
    for trial in study.get_trials(deepcopy=False):
        if trial.number in requeued:
            continue
        if trial.state == TrialState.RUNNING:  # its process died: only one process runs a study here
            study.tell(trial.number, state=TrialState.FAIL)
            if not trial.params:  # it died before its values were drawn: nothing to continue
                continue
        elif not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")):
            continue
        number = _folder_number(trial)
        study.enqueue_trial(_space_values(trial.number, trial.params, params), user_attrs={CONTINUES: number})
        requeued.add(trial.number)
        log.info("trial %d was interrupted: it continues in %s", trial.number, _trial_folder(results, number))
    study.set_user_attr("requeued", sorted(requeued))


def _enqueue_spec_values(study, config: DictConfig, params: list[Param]) -> None:
    """tune.spec_values_first: a new study's first trial trains the spec's own values, the baseline that the
    other trials must beat. A value outside the space is not enqueued: Optuna would train it with only a
    warning (and fail on a choice it does not list), and the sampler would learn from a point outside its space."""
    if not config.tune.spec_values_first or study.get_trials(deepcopy=False):
        return
    values = {param.path: OmegaConf.select(config, param.path) for param in params}
    outside = [f"{param.path}={values[param.path]!r}" for param in params if not _in_space(param, values[param.path])]
    if outside:
        log.info("the spec's own values are not run as the first trial: %s outside tune.space", ", ".join(outside))
        return
    study.enqueue_trial(values)
    log.info("trial 0 trains the spec's own values (tune.spec_values_first): %s", _shown(values))


def _shown(values: Mapping[str, Any]) -> str:
    """field=value, ... for the log, floats to 4 significant digits (trials.csv and best_spec.yaml keep all)."""
    return ", ".join(
        f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={value!r}" for path, value in values.items()
    )


def _rows(study) -> list[TrialRow]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = (
            trial.value
            if trial.value is not None
            else (trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        )
        minutes = (
            (trial.datetime_complete - trial.datetime_start).total_seconds() / 60
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        rows.append(
            TrialRow(
                trial.number,
                trial.state.name,
                value,
                len(trial.intermediate_values),
                minutes,
                _trial_folder(Path(), _folder_number(trial)).name,
                dict(trial.params),
            )
        )
    return rows


def _finished(study) -> tuple[int, float]:
    """(complete + pruned trials, their minutes): what tune.trials and tune.time_budget_minutes count."""
    done = [row for row in _rows(study) if row.state in ("COMPLETE", "PRUNED")]
    return len(done), sum(row.minutes or 0.0 for row in done)


class _Objective:
    def __init__(self, base: DictConfig, params: list[Param], results: Path, config: DictConfig, status: StatusFile):
        self.base, self.params, self.results, self.config, self.status = base, params, results, config, status
        self.metric = config.tune.metric

    def __call__(self, trial) -> float:
        import optuna

        folder = _trial_folder(self.results, _folder_number(trial))
        try:
            drawn = {param.path: _suggest(trial, param) for param in self.params}
        except (ValueError, TypeError) as error:  # a queued value (from study.db) that is none of the choices
            raise DataError(
                f"{STUDY_FILE}: trial {trial.number} was queued with a value outside tune.space "
                f"({first_line(error, 200)}); {ANOTHER_STUDY}"
            ) from None
        values = _space_values(trial.number, drawn, self.params)
        log.info("trial %d: %s", trial.number, _shown(values))

        def report(value: float, epoch: int) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        reporter = ValidationReporter(self.metric, report)
        try:
            train.run(trial_config(self.base, values, folder), extra_callbacks=[reporter])
        except (Preempted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)  # the next `reid tune` continues this trial
            raise
        self._clean(folder)
        if reporter.last is None:
            raise DataError(
                f"trial {trial.number} logged no {self.metric}: is the validation split empty? "
                f"See {folder / 'train.log'}"
            )
        if not math.isfinite(reporter.last):  # Optuna fails such a trial (and the study goes on): say why
            log.warning(
                "trial %d ended with %s=%s (diverged?); it counts as failed", trial.number, self.metric, reporter.last
            )
        state = "pruned" if reporter.pruned_at is not None else "complete"
        self.status.write(
            RUNNING,
            f"Trial {trial.number} {state}: {self.metric}={reporter.last:.4f}",
            trial=trial.number,
            trial_state=state,
            params=values,
        )
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        return reporter.last

    def _clean(self, folder: Path) -> None:
        if not self.config.tune.keep_checkpoints:
            for checkpoint in folder.glob("*.pth"):
                checkpoint.unlink()


def _write_outputs(
    study, config: DictConfig, params: list[Param], results: Path, maximize: bool, announce: bool
) -> None:
    """trials.csv, tune.png and best_spec.yaml (announce: log the best trial, once, at the end)."""
    rows = _rows(study)
    metric = config.tune.metric
    write_trials_csv(results / "trials.csv", rows, params, metric)
    plot_study(results / "tune.png", rows, params, metric, maximize)
    complete = [row for row in rows if row.state == "COMPLETE"]
    if not complete:
        if announce:
            log.info("no trial has completed yet; trials in %s", results / "trials.csv")
        return
    best = study.best_trial
    values = _space_values(best.number, best.params, params)
    try:  # the field's own rules, as for a trial (a value from study.db is data)
        spec = trial_config(config, values)
    except ConfigError as error:
        raise DataError(
            f"{STUDY_FILE}: the best trial's values are not a valid spec ({error}); {ANOTHER_STUDY}"
        ) from None
    header = (
        f"# reid tune: the best of {len(complete)} complete trials (trial {best.number}, {metric}="
        f"{best.value:.4f} on the validation split); run it with `reid train -e best_spec.yaml`\n"
    )
    atomic_write_text(results / "best_spec.yaml", header + OmegaConf.to_yaml(spec))
    if announce:
        log.info(
            "best trial %d: %s=%.4f with %s; spec in %s",
            best.number,
            metric,
            best.value,
            _shown(values),
            results / "best_spec.yaml",
        )


class _ShownOnce(logging.Filter):
    """On the console, an info line that every trial repeats word for word (the dataset table, the data and
    model notes) is shown once a study; each trial's train.log keeps them all."""

    def __init__(self):
        super().__init__()
        self.shown = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if message in self.shown:
            return False
        self.shown.add(message)
        return True


@contextmanager
def _console_shows_repeats_once() -> Iterator[None]:
    consoles = [
        handler
        for handler in logging.getLogger("reid_tao").handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]
    once = _ShownOnce()
    for handler in consoles:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(once)


def _check_one_process(config: DictConfig) -> None:
    train_cfg = config.train
    plan = plan_devices(train_cfg.accelerator, train_cfg.num_gpus, train_cfg.gpu_ids, train_cfg.num_nodes)
    if plan.num_processes * plan.num_nodes > 1:
        raise ConfigError("reid tune runs each trial in one process; set train.num_gpus=1 and train.num_nodes=1")


@reported("tune")
def run(config: DictConfig, status: StatusFile) -> Path:
    import optuna

    tune = config.tune
    space = OmegaConf.to_container(tune.space) if tune.space else default_space(config)
    params = parse_space(space)
    _check_one_process(config)
    results = prepare_task(config, "tune")
    if not tune.space:
        log.info(
            "tune.space is not set: searching the default space (reid tune --help, docs/tune.md)\n%s", space_text(space)
        )
    base = _trial_base(config, _validation_root(config, results))
    _check_ends(base, params)
    maximize = metric_modes()[tune.metric] == "max"
    # A failed or stopped trial ends the study with the CLI's one line; Optuna would log its traceback first.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = _open_study(results / STUDY_FILE, config, params, maximize)
    _requeue_interrupted(study, params, results)
    _enqueue_spec_values(study, config, params)
    budget = tune.time_budget_minutes

    def stop_when_done(study, _trial) -> None:
        done, minutes = _finished(study)
        _write_outputs(study, config, params, results, maximize, announce=False)
        if done >= tune.trials or (budget and minutes >= budget):
            study.stop()

    done, minutes = _finished(study)
    if done >= tune.trials or (budget and minutes >= budget):
        log.info(
            "the study has %d finished trials (%.1f min): nothing to run; raise tune.trials or "
            "tune.time_budget_minutes to continue it",
            done,
            minutes,
        )
    else:
        log.info(
            "study %s: %d of tune.trials=%d finished%s",
            results / STUDY_FILE,
            done,
            tune.trials,
            f", {minutes:.1f} of {budget:g} minutes used" if budget else "",
        )
        with _console_shows_repeats_once():
            study.optimize(
                _Objective(base, params, results, config, status), callbacks=[stop_when_done], gc_after_trial=True
            )
    _write_outputs(study, config, params, results, maximize, announce=True)
    return results
