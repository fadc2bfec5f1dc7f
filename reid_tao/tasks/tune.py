"""`reid tune`: a hyperparameter search over spec fields (Optuna), on a validation split of the training
identities, with per-epoch pruning; the study lives in an SQLite file, so re-running continues it.

Outputs in results_dir/tune/: study.db, val_split/ (the carved validation root), trial_NNN/ (each trial's
training folder: experiment.yaml, status.json, logs), trials.csv, tune.png, best_spec.yaml (the spec with
the best trial's values, runnable with `reid train -e`), and status.json with a line per trial.
"""
import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ..builders import check_spec
from ..config.loader import schema_config
from ..config.search_space import Param, parse_space
from ..config.validate import validate_config
from ..data.val_split import GALLERY_FOLDER, QUERY_FOLDER, SPLIT_FILE, TRAIN_FOLDER, make_val_split
from ..engine.devices import plan_devices
from ..engine.metric_names import metric_modes
from ..engine.status import RUNNING, StatusFile
from ..engine.tuning import PRUNERS, SAMPLERS, ValidationReporter
from ..errors import ConfigError, DataError, Preempted
from ..io import atomic_write_text
from . import train
from .common import prepare_task, reported
from .tune_report import TrialRow, plot_study, write_trials_csv

log = logging.getLogger("reid_tao.tune")
STUDY_FILE, STUDY_NAME = "study.db", "reid_tune"
SPLIT_DIR = "val_split"
NO_PERIODIC_CHECKPOINTS = 1_000_000  # trials keep only reid_model_latest.pth (to resume an interrupted trial)


def trial_config(base: DictConfig, values: Mapping[str, Any], folder: Optional[Path] = None) -> DictConfig:
    """``base`` with a trial's values (and training folder), checked by the same rules as any spec."""
    config = OmegaConf.merge(schema_config(), OmegaConf.to_container(base, resolve=False))
    for path, value in values.items():
        OmegaConf.update(config, path, value, merge=False)
    if folder is not None:
        OmegaConf.update(config, "train.results_dir", str(folder))
    validate_config(config)
    check_spec(config)
    OmegaConf.set_readonly(config, True)
    return config


def _check_ends(base: DictConfig, params: List[Param]) -> None:
    """Every end of a range and every choice must be a valid value of its field (its own rules say why not)."""
    for param in params:
        for value in param.values:
            try:
                trial_config(base, {param.path: value})
            except ConfigError as error:
                raise ConfigError(f"tune.space.{param.path}: {value!r} is not a valid value: {error}") from None
            except Exception as error:  # a value of the wrong type for the field (OmegaConf's validation)
                raise ConfigError(f"tune.space.{param.path}: {value!r} is not a valid value ({error})") from None


def _validation_root(config: DictConfig, results: Path) -> Tuple[str, str, str]:
    """(train, query, gallery) folders: tune.query/test_dataset when given, else a split carved (once) from the
    training identities into results/val_split."""
    tune, data = config.tune, config.dataset
    if not data.train_dataset_dir:
        raise ConfigError("dataset.train_dataset_dir is not set; point it to the training folder to tune on")
    if bool(tune.query_dataset) != bool(tune.test_dataset):
        raise ConfigError("set both tune.query_dataset and tune.test_dataset, or neither (then a validation split "
                          "is carved from the training identities)")
    if tune.query_dataset:
        return data.train_dataset_dir, tune.query_dataset, tune.test_dataset
    train_dir = Path(data.train_dataset_dir)
    split = results / SPLIT_DIR
    if not (split / SPLIT_FILE).is_file():
        if train_dir.name != TRAIN_FOLDER:
            raise ConfigError(f"dataset.train_dataset_dir={train_dir} is not a Market-1501 {TRAIN_FOLDER}/ folder, so "
                              "no validation split can be carved from it; set tune.query_dataset and "
                              "tune.test_dataset to validation folders of your own")
        made = make_val_split(train_dir.parent, split, num_val_ids=tune.num_val_ids, seed=tune.seed)
        log.info("validation split (tune.num_val_ids=%d, tune.seed=%d) in %s:\n%s", tune.num_val_ids, tune.seed,
                 split, made["summary"])
    return str(split / TRAIN_FOLDER), str(split / QUERY_FOLDER), str(split / GALLERY_FOLDER)


def _trial_base(config: DictConfig, folders: Tuple[str, str, str]) -> DictConfig:
    train_dir, query, gallery = folders
    return trial_config(config, {
        "dataset.train_dataset_dir": train_dir, "dataset.query_dataset_dir": query, "dataset.test_dataset_dir": gallery,
        "train.validation_interval": 1,  # pruning and the objective read the metric of every epoch
        "train.checkpoint_interval": NO_PERIODIC_CHECKPOINTS, "train.checkpoint_interval_unit": "epoch",
        "train.checkpointer.enable_topk": False, "train.resume_training_checkpoint_path": None,
        "wandb.enable": False})


def _suggest(trial, param: Param):
    low, high = param.values[0], param.values[-1]
    if param.kind == "log":
        return trial.suggest_float(param.path, low, high, log=True)
    if param.kind == "range":
        return trial.suggest_float(param.path, low, high)
    if param.kind == "int":
        return trial.suggest_int(param.path, low, high)
    return trial.suggest_categorical(param.path, list(param.values))


def _requeue_interrupted(study) -> None:
    """A trial stopped by a signal (or a killed process) runs again with the same values in the same folder,
    where its training resumes from reid_model_latest.pth."""
    from optuna.trial import TrialState

    requeued = set(study.user_attrs.get("requeued", []))
    for trial in study.get_trials(deepcopy=False):
        if trial.number in requeued or "folder" not in trial.user_attrs:
            continue
        if trial.state == TrialState.RUNNING:  # its process died: only one process runs a study here
            study.tell(trial.number, state=TrialState.FAIL)
        elif not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")):
            continue
        study.enqueue_trial(trial.params, user_attrs={"folder": trial.user_attrs["folder"]})
        requeued.add(trial.number)
        log.info("trial %d was interrupted: it continues in %s", trial.number, trial.user_attrs["folder"])
    study.set_user_attr("requeued", sorted(requeued))


def _in_space(param: Param, value: Any) -> bool:
    if param.kind == "choice":
        return value in param.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        param.values[0] <= value <= param.values[-1] and (param.kind != "int" or float(value).is_integer())


def _enqueue_spec_values(study, config: DictConfig, params: List[Param]) -> None:
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
    log.info("trial 0 trains the spec's own values (tune.spec_values_first): %s",
             ", ".join(f"{path}={value!r}" for path, value in values.items()))


def _rows(study) -> List[TrialRow]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        minutes = ((trial.datetime_complete - trial.datetime_start).total_seconds() / 60
                   if trial.datetime_complete and trial.datetime_start else None)
        rows.append(TrialRow(trial.number, trial.state.name, value, len(trial.intermediate_values), minutes,
                             trial.user_attrs.get("folder", ""), dict(trial.params)))
    return rows


def _finished(study) -> Tuple[int, float]:
    """(complete + pruned trials, their minutes): what tune.trials and tune.time_budget_minutes count."""
    done = [row for row in _rows(study) if row.state in ("COMPLETE", "PRUNED")]
    return len(done), sum(row.minutes or 0.0 for row in done)


class _Objective:
    def __init__(self, base: DictConfig, params: List[Param], results: Path, config: DictConfig, status: StatusFile):
        self.base, self.params, self.results, self.config, self.status = base, params, results, config, status
        self.metric = config.tune.metric

    def __call__(self, trial) -> float:
        import optuna

        values = {param.path: _suggest(trial, param) for param in self.params}
        folder = trial.user_attrs.get("folder") or f"trial_{trial.number:03d}"
        trial.set_user_attr("folder", folder)
        log.info("trial %d: %s", trial.number, ", ".join(f"{path}={value!r}" for path, value in values.items()))

        def report(value: float, epoch: int) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        reporter = ValidationReporter(self.metric, report)
        try:
            train.run(trial_config(self.base, values, self.results / folder), extra_callbacks=[reporter])
        except (Preempted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)  # the next `reid tune` continues this trial
            raise
        self._clean(folder)
        if reporter.last is None:
            raise DataError(f"trial {trial.number} logged no {self.metric}: is the validation split empty? "
                            f"See {self.results / folder / 'train.log'}")
        state = "pruned" if reporter.pruned_at is not None else "complete"
        self.status.write(RUNNING, f"Trial {trial.number} {state}: {self.metric}={reporter.last:.4f}",
                          trial=trial.number, trial_state=state, params=values)
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        return reporter.last

    def _clean(self, folder: str) -> None:
        if not self.config.tune.keep_checkpoints:
            for checkpoint in (self.results / folder).glob("*.pth"):
                checkpoint.unlink()


def _write_outputs(study, config: DictConfig, params: List[Param], results: Path, maximize: bool) -> None:
    rows = _rows(study)
    metric = config.tune.metric
    write_trials_csv(results / "trials.csv", rows, params, metric)
    plot_study(results / "tune.png", rows, params, metric, maximize)
    complete = [row for row in rows if row.state == "COMPLETE"]
    if not complete:
        log.info("no trial has completed yet; trials in %s", results / "trials.csv")
        return
    best = study.best_trial
    spec = OmegaConf.merge(schema_config(), OmegaConf.to_container(config, resolve=False))
    for path, value in best.params.items():
        OmegaConf.update(spec, path, value, merge=False)
    header = (f"# reid tune: the best of {len(complete)} complete trials (trial {best.number}, {metric}="
              f"{best.value:.4f} on the validation split); run it with `reid train -e best_spec.yaml`\n")
    atomic_write_text(results / "best_spec.yaml", header + OmegaConf.to_yaml(spec))
    log.info("best trial %d: %s=%.4f with %s; spec in %s", best.number, metric, best.value,
             ", ".join(f"{k}={v!r}" for k, v in best.params.items()), results / "best_spec.yaml")


def _check_one_process(config: DictConfig) -> None:
    train_cfg = config.train
    plan = plan_devices(train_cfg.accelerator, train_cfg.num_gpus, train_cfg.gpu_ids, train_cfg.num_nodes)
    if plan.num_processes * plan.num_nodes > 1:
        raise ConfigError("reid tune runs each trial in one process; set train.num_gpus=1 and train.num_nodes=1")


@reported("tune")
def run(config: DictConfig, status: StatusFile) -> Path:
    import optuna

    tune = config.tune
    params = parse_space(tune.space)
    _check_one_process(config)
    results = prepare_task(config, "tune")
    base = _trial_base(config, _validation_root(config, results))
    _check_ends(base, params)
    maximize = metric_modes()[tune.metric] == "max"
    num_epochs = config.train.num_epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{(results / STUDY_FILE).absolute()}", load_if_exists=True,
        direction="maximize" if maximize else "minimize", sampler=SAMPLERS[tune.sampler](tune.seed, num_epochs),
        pruner=PRUNERS[tune.pruner](tune.seed, num_epochs))
    _requeue_interrupted(study)
    _enqueue_spec_values(study, config, params)
    budget = tune.time_budget_minutes

    def stop_when_done(study, _trial) -> None:
        done, minutes = _finished(study)
        _write_outputs(study, config, params, results, maximize)
        if done >= tune.trials or (budget and minutes >= budget):
            study.stop()

    done, minutes = _finished(study)
    if done >= tune.trials or (budget and minutes >= budget):
        log.info("the study has %d finished trials (%.1f min): nothing to run; raise tune.trials or "
                 "tune.time_budget_minutes to continue it", done, minutes)
    else:
        log.info("study %s: %d of tune.trials=%d finished%s", results / STUDY_FILE, done, tune.trials,
                 f", {minutes:.1f} of {budget:g} minutes used" if budget else "")
        study.optimize(_Objective(base, params, results, config, status), callbacks=[stop_when_done],
                       gc_after_trial=True)
    _write_outputs(study, config, params, results, maximize)
    return results
