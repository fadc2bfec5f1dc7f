"""The one list of logged metric names: which direction is better (train.checkpointer.monitor / mode) and
which are TAO's status.json KPIs. Loss names come from the loss-term table, so a new term is logged,
monitorable and listed here without an edit (``train_<name>_loss``)."""

from typing import NamedTuple

from reid_tao.evaluation.metrics import RankMetrics
from reid_tao.model.losses import LOSS_TERMS, value_name


class Metric(NamedTuple):
    mode: str  # "min" or "max": the better direction
    kpi: str | None = None  # its name among status.json's KPIs (TAO's names), None: not a KPI


TRAIN_PREFIX = "train_"  # TAO's scalar names: train_loss, train_acc_1, train_id_loss, ...
# Validation metrics (also evaluate's): logged under these names by training, and written by evaluate.
VALIDATION = {
    "mAP": Metric("max", "mAP"),
    "mINP": Metric("max"),
    "cmc_rank_1": Metric("max", "cmc_rank_1"),
    "cmc_rank_5": Metric("max", "cmc_rank_5"),
    "cmc_rank_10": Metric("max", "cmc_rank_10"),
}
VALIDATION_METRICS = tuple(VALIDATION)
# Domain adaptation (adaptation.enable): the pseudo labels each epoch trained on (also KPIs).
ADAPTATION = {
    "clusters": Metric("max", "clusters"),
    "outliers": Metric("min", "outliers"),
    "images_used": Metric("max", "images_used"),
}

# The labelled source stream of adaptation (adaptation.source_dataset_dir): its loss, unweighted.
SOURCE_LOSS = "source_loss"


def train_name(key: str) -> str:
    """The logged name of a training-step value: loss -> train_loss, id_loss -> train_id_loss."""
    return TRAIN_PREFIX + key


def logged_metrics() -> dict[str, Metric]:
    """Every logged metric name -> its Metric, with one loss per registered term (read at call time)."""
    losses = {train_name(value_name(term)): Metric("min") for term in LOSS_TERMS}
    losses[train_name(SOURCE_LOSS)] = Metric("min")
    return {
        train_name("loss"): Metric("min", "train_loss"),
        **losses,
        train_name("acc_1"): Metric("max", "train_acc"),
        **VALIDATION,
        **ADAPTATION,
    }


def metric_modes() -> dict[str, str]:
    """Logged metric name -> "min" / "max" (the default of train.checkpointer.mode)."""
    return {name: metric.mode for name, metric in logged_metrics().items()}


def kpi_names() -> dict[str, str]:
    """Logged metric name -> TAO's status.json KPI name, for the metrics that are KPIs."""
    return {name: metric.kpi for name, metric in logged_metrics().items() if metric.kpi}


def validation_values(metrics: RankMetrics) -> dict[str, float]:
    """The validation metrics of a ranking under their logged names."""
    cmc = metrics.cmc
    return {
        "mAP": float(metrics.mAP),
        "mINP": float(metrics.mINP),
        "cmc_rank_1": float(cmc[0]),
        "cmc_rank_5": float(cmc[4]),
        "cmc_rank_10": float(cmc[9]),
    }
