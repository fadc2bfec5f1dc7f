"""The outputs of `reid evaluate`: each a small function of the :class:`EvaluationResult`, run in the order of
``EVALUATE_WRITERS``. A new output is one function and one table entry (see docs/contributing.md)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from reid_tao.engine.metric_names import validation_values
from reid_tao.engine.status import RUNNING, StatusFile, kpi_from
from reid_tao.evaluation.metrics import RankMetrics, top_ranked
from reid_tao.evaluation.plots import choose_query_rows, plot_cmc_curves, plot_sampled_matches
from reid_tao.evaluation.result import PLAIN, RE_RANKED, EvaluationResult
from reid_tao.io.atomic import atomic_output, atomic_write_json

log = logging.getLogger("reid_tao.evaluate")


@dataclass(frozen=True)
class OutputContext:
    """What a writer may need besides the result: the spec, the task's folder and its status.json."""

    config: DictConfig
    results_dir: Path
    status: StatusFile
    precision: str  # of the features: evaluate.precision, or an exported model's data type
    checkpoint: str = ""  # the evaluated model's file: its outputs carry its name (see per_model)


def per_model(out: OutputContext, name: str) -> Path:
    """results_dir/<stem>_<model stem><suffix> for the evaluated model (cmc_curve.png -> cmc_curve_model_int8.png),
    so evaluating a .pth, its fp32 and its INT8 ONNX keeps the outputs of each; the plain name holds a copy of
    the latest (see keep_as_latest). Without a checkpoint name: the plain name."""
    plain = out.results_dir / name
    if not out.checkpoint:
        return plain
    return plain.with_name(f"{plain.stem}_{Path(out.checkpoint).stem}{plain.suffix}")


def keep_as_latest(path: Path, out: OutputContext, name: str) -> None:
    """A copy of the model's output under its plain name (metrics.json, ...): the latest evaluation's, findable."""
    latest = out.results_dir / name
    if latest != path and path.is_file():  # (a writer replaced in a test may write nothing)
        with atomic_output(latest, binary=True) as stream:
            stream.write(path.read_bytes())


# A writer returns the file it wrote (listed in the closing log line), or None.
Writer = Callable[[EvaluationResult, OutputContext], Path | None]


def format_table(results: dict[str, RankMetrics]) -> str:
    lines = [f"{'':<12}{'mAP':>8}{'mINP':>8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}"]
    for name, metrics in results.items():
        lines.append(
            f"{name:<12}{100 * metrics.mAP:>7.2f}%{100 * metrics.mINP:>7.2f}%"
            f"{100 * metrics.cmc[0]:>7.2f}%{100 * metrics.cmc[4]:>7.2f}%{100 * metrics.cmc[9]:>8.2f}%"
        )
    return "\n".join(lines)


def metrics_dict(metrics: RankMetrics, max_rank: int) -> dict:
    out = metrics.as_dict()
    out["cmc"] = [float(v) for v in metrics.cmc[:max_rank]]
    return out


def log_results(result: EvaluationResult, out: OutputContext) -> None:
    log.info(
        "results (%d queries, %d gallery images)\n%s",
        len(result.query),
        len(result.gallery),
        format_table(result.rankings),
    )


def write_metrics_json(result: EvaluationResult, out: OutputContext) -> Path:
    """The figures the spec asks for (re-ranked with re_ranking.re_ranking, as TAO reports) at the top level,
    named by "ranking"; with re-ranking the plain ones stay under "plain"."""
    report = metrics_dict(result.shown, result.max_rank)
    report["ranking"] = result.shown_name
    report["re_ranking"] = bool(out.config.re_ranking.re_ranking)
    report["precision"] = out.precision  # of the features the metrics come from
    if result.shown_name == RE_RANKED:
        report[PLAIN] = metrics_dict(result.plain, result.max_rank)
    if out.checkpoint:
        report["checkpoint"] = out.checkpoint
    path = per_model(out, "metrics.json")
    atomic_write_json(path, report)
    keep_as_latest(path, out, "metrics.json")
    return path


def write_status_kpi(result: EvaluationResult, out: OutputContext) -> None:
    out.status.kpi = kpi_from(validation_values(result.shown))
    out.status.write(RUNNING, "Test metrics generated.", ranking=result.shown_name)  # TAO's message


def plot_cmc(result: EvaluationResult, out: OutputContext) -> Path:
    curves = {name: (m.cmc[: result.max_rank], m.mAP) for name, m in result.rankings.items()}
    chosen = out.config.evaluate.output_cmc_curve_plot
    path = Path(chosen) if chosen else per_model(out, "cmc_curve.png")
    plot_cmc_curves(curves, path)
    if not chosen:
        keep_as_latest(path, out, "cmc_curve.png")
    return path


def plot_matches(result: EvaluationResult, out: OutputContext) -> Path | None:
    """The top-ranked gallery images of some queries with a true match (evaluate.sampled_matches picks them)."""
    config = out.config
    query_ap = result.shown.query_ap  # of the ranking shown
    rows = choose_query_rows(
        len(result.query),
        config.re_ranking.num_query,
        seed=max(config.train.seed, 0),
        candidates=result.valid_query,
        choice=config.evaluate.sampled_matches,
        query_ap=query_ap,
    )
    if not len(rows):
        return None
    query_pids, gallery_pids, query_camids, gallery_camids = result.ids
    row_index = torch.as_tensor(rows, device=result.distances.device)
    ranked, is_match = top_ranked(
        result.distances[row_index], query_pids[rows], gallery_pids, query_camids[rows], gallery_camids, result.max_rank
    )
    chosen = config.evaluate.output_sampled_matches_plot
    path = Path(chosen) if chosen else per_model(out, "sampled_matches.png")
    query = result.query
    plot_sampled_matches(
        [query[i].path for i in rows],
        [r.path for r in result.gallery],
        ranked.cpu(),
        is_match.cpu(),
        path,
        query_labels=[f"id {query[i].shown_pid} cam {query[i].camid} AP {query_ap[i]:.2f}" for i in rows],
    )
    if not chosen:
        keep_as_latest(path, out, "sampled_matches.png")
    return path


# name -> writer, in the order they run (status.json's KPI line after metrics.json, as TAO writes it).
EVALUATE_WRITERS: dict[str, Writer] = {
    "results log": log_results,
    "metrics.json": write_metrics_json,
    "status.json kpi": write_status_kpi,
    "CMC plot": plot_cmc,
    "sampled matches plot": plot_matches,
}


def write_outputs(result: EvaluationResult, out: OutputContext) -> list[Path]:
    """Run every writer of EVALUATE_WRITERS; log and return the files they wrote."""
    written = [path for writer in EVALUATE_WRITERS.values() if (path := writer(result, out)) is not None]
    if written:
        names = [str(path) for path in written]
        log.info(
            "wrote %s%s",
            names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}",
            f" (named after {Path(out.checkpoint).name}; the plain names, e.g. metrics.json, hold a copy of "
            "the latest evaluation)"
            if out.checkpoint
            else "",
        )
    return written
