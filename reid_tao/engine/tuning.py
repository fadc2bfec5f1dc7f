"""What a trial of `reid tune` needs from the training loop: its validation metric, epoch by epoch, reported
to the study, and a stop when the study prunes it. Optuna's samplers and pruners by name (tune.sampler,
tune.pruner); optuna is imported only when a study is made."""

from collections.abc import Callable

import pytorch_lightning as pl


class ValidationReporter(pl.Callback):
    """After each validation: ``report(value, epoch)`` with the monitored metric; when it answers True (the
    study prunes the trial), training stops at the end of this epoch and ``pruned_at`` says when."""

    def __init__(self, metric: str, report: Callable[[float, int], bool]):
        self.metric, self.report = metric, report
        self.last: float | None = None
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        self.last = float(trainer.callback_metrics[self.metric])
        if self.report(self.last, trainer.current_epoch):
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


def _tpe(seed: int, num_epochs: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(seed: int, num_epochs: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _median(seed: int, num_epochs: int):
    import optuna

    # Two finished trials before any pruning, and no trial judged in the first third of its epochs (at least
    # the warmup epoch): early epochs rank trials unreliably. In the Market study (docs/results.md) trial 0 led
    # trial 1 after epoch 1 and ended 2.3 mAP below it, and the best trial passed epoch 1 by 0.5 mAP.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=median_warmup_epochs(num_epochs))


def median_warmup_epochs(num_epochs: int) -> int:
    """Epoch index from which the median pruner may stop a trial: a third of the schedule, at least 1."""
    return max(1, num_epochs // 3)


def _hyperband(seed: int, num_epochs: int):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(num_epochs, 1))


def _no_pruning(seed: int, num_epochs: int):
    import optuna

    return optuna.pruners.NopPruner()


# tune.sampler / tune.pruner -> factory(seed, num_epochs of a trial)
OPTUNA_SAMPLERS: dict[str, Callable] = {"tpe": _tpe, "random": _random}
PRUNERS: dict[str, Callable] = {"median": _median, "hyperband": _hyperband, "none": _no_pruning}
