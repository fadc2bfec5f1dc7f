"""What `reid tune` writes about a study: trials.csv (one row a trial) and tune.png (the objective per trial,
and each searched field's effect on it)."""

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from reid_tao.config.search_space import Param
from reid_tao.io.atomic import atomic_save_figure, atomic_write_text


class TrialRow(NamedTuple):
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None  # the final metric (COMPLETE) or the last reported one (PRUNED)
    epochs: int  # validated epochs
    minutes: float | None
    folder: str
    params: dict[str, Any]


def write_trials_csv(path: Path, rows: Sequence[TrialRow], params: Sequence[Param], metric: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", metric, "epochs", "minutes", *[p.path for p in params], "folder"])
    for row in rows:
        writer.writerow(
            [
                row.number,
                row.state,
                "" if row.value is None else f"{row.value:.6g}",
                row.epochs,
                "" if row.minutes is None else f"{row.minutes:.2f}",
                *[row.params.get(p.path, "") for p in params],
                row.folder,
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def plot_study(path: Path, rows: Sequence[TrialRow], params: Sequence[Param], metric: str, maximize: bool) -> None:
    atomic_save_figure(study_figure(rows, params, metric, maximize), path, dpi=100)


def study_figure(rows: Sequence[TrialRow], params: Sequence[Param], metric: str, maximize: bool):
    """Left: the metric of each trial (pruned ones at their last reported value) and the best so far.
    Then one panel per searched field: its value against the metric."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scored = [row for row in rows if row.value is not None and row.state in ("COMPLETE", "PRUNED")]
    figure = Figure(figsize=(4.2 * (1 + len(params)), 3.6))
    axes = figure.subplots(1, 1 + len(params), squeeze=False)[0]
    for state, marker, color in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:gray")):
        chosen = [row for row in scored if row.state == state]
        axes[0].scatter(
            [row.number for row in chosen],
            [row.value for row in chosen],
            marker=marker,
            color=color,
            label=state.lower(),
        )
    complete = sorted((row for row in scored if row.state == "COMPLETE"), key=lambda row: row.number)
    if complete:
        best, line = None, []
        for row in complete:
            better = best is None or (row.value > best if maximize else row.value < best)
            best = row.value if better else best
            line.append(best)
        axes[0].step([row.number for row in complete], line, where="post", color="tab:orange", label="best so far")
    axes[0].set(xlabel="trial", ylabel=metric, title=f"{metric} per trial")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    axes[0].legend(fontsize=8)
    for ax, param in zip(axes[1:], params):
        _plot_param(ax, param, complete, metric)
    figure.tight_layout()
    return figure


def _plot_param(ax, param: Param, rows: list[TrialRow], metric: str) -> None:
    values = [row.params.get(param.path) for row in rows]
    scores = [row.value for row in rows]
    if param.kind == "choice":
        labels = [str(option) for option in param.values]
        positions = [labels.index(str(value)) if str(value) in labels else math.nan for value in values]
        ax.scatter(positions, scores, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    else:
        ax.scatter(values, scores, color="tab:blue")
        if param.kind == "log":
            _log_axis(ax, *param.values)
        elif param.kind == "int":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=param.path, ylabel=metric, title=param.path.rsplit(".", 1)[-1])


def _log_axis(ax, low: float, high: float) -> None:
    """A log axis over the searched range with a few short labels (1, 2 and 5 per decade, thinned to at most
    five): matplotlib's own labels a range under a decade at every minor tick, one over another."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(low / 1.2, high * 1.2)
    ticks = [
        mantissa * 10.0**exponent
        for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for mantissa in (1, 2, 5)
        if low / 1.2 <= mantissa * 10.0**exponent <= high * 1.2
    ]
    if len(ticks) < 2:
        ticks = [low, high]
    ticks = ticks[:: math.ceil(len(ticks) / 5)]
    ax.set_xticks(ticks, [f"{tick:.2g}" for tick in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
