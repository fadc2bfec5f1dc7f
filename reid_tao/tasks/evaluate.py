"""`reid evaluate`: Market-1501 metrics (plain and re-ranked), metrics.json, CMC and sampled-match plots."""
import logging
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from omegaconf import DictConfig

from ..data.datamodule import eval_dataset
from ..data.layouts import read_split
from ..data.records import summary_table
from ..build import extraction_batch_size, load_trained_model, task_checkpoint
from ..engine.status import RUNNING, StatusFile
from ..engine.extractor import extract, section_precision
from ..errors import ConfigError
from ..evaluation.distance import pairwise_distance
from ..evaluation.metrics import RankMetrics, evaluate_rankings, top_ranked
from ..evaluation.plots import choose_query_rows, plot_cmc_curves, plot_sampled_matches
from ..evaluation.rerank import re_ranking
from ..io import atomic_write_json
from .common import prepare_task, reported

log = logging.getLogger("reid_tao.evaluate")


def eval_folder(config: DictConfig, own: str, fallback: str) -> tuple:
    """evaluate.<own> or, when unset, dataset.<fallback> (never inference.*: TAO mixes them, bug B6)."""
    value = config.evaluate[own] or config.dataset[fallback]
    field = f"evaluate.{own}" if config.evaluate[own] else f"dataset.{fallback}"
    if not value:
        raise ConfigError(f"evaluate.{own} is not set (nor dataset.{fallback}); point it to a Market-1501 folder "
                          "or a list file")
    return value, field


def queries_with_a_match(q_pids: torch.Tensor, g_pids: torch.Tensor, q_cams: torch.Tensor,
                         g_cams: torch.Tensor) -> np.ndarray:
    """Queries that have a true match on another camera, from per-(id, camera) gallery counts (no Q x G)."""
    num_ids = int(max(q_pids.max(), g_pids.max())) + 2
    num_cams = int(max(q_cams.max(), g_cams.max())) + 1
    keep = g_pids >= 0
    counts = torch.bincount((g_pids[keep] * num_cams + g_cams[keep]).long(), minlength=num_ids * num_cams)
    counts = counts.view(num_ids, num_cams)
    q = q_pids.clamp(min=0).long()
    other_cameras = counts[q].sum(1) - counts[q, q_cams.long()]
    return ((other_cameras > 0) & (q_pids > 0)).numpy()


def format_table(results: Dict[str, RankMetrics]) -> str:
    lines = [f"{'':<12}{'mAP':>8}{'mINP':>8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}"]
    for name, metrics in results.items():
        lines.append(f"{name:<12}{100 * metrics.mAP:>7.2f}%{100 * metrics.mINP:>7.2f}%"
                     f"{100 * metrics.cmc[0]:>7.2f}%{100 * metrics.cmc[4]:>7.2f}%{100 * metrics.cmc[9]:>8.2f}%")
    return "\n".join(lines)


def metrics_dict(metrics: RankMetrics, max_rank: int) -> dict:
    out = metrics.as_dict()
    out["cmc"] = [float(v) for v in metrics.cmc[:max_rank]]
    return out


@reported("evaluate")
def run(config: DictConfig, status: StatusFile) -> Dict[str, RankMetrics]:
    results_dir = prepare_task(config, "evaluate")
    model, preprocessing, _ = load_trained_model(task_checkpoint(config, "evaluate"), "evaluate.checkpoint",
                                                 config, trust=config.model.trust_weights_file)
    query_dir, query_field = eval_folder(config, "query_dataset", "query_dataset_dir")
    gallery_dir, gallery_field = eval_folder(config, "test_dataset", "test_dataset_dir")
    layout = config.dataset.layout
    query, gallery = read_split(query_dir, query_field, layout), read_split(gallery_dir, gallery_field, layout)
    log.info("evaluation data\n%s", summary_table({"query": query, "gallery": gallery}))

    features = extract(model, eval_dataset(query + gallery, preprocessing.eval_transform()), config.evaluate,
                       extraction_batch_size(config, "evaluate"), config.dataset.num_workers, config.model.with_flip_feature)
    if features is None:
        return {}  # another process of a multi-process run: the global-zero process reports
    pids = torch.tensor([r.pid for r in query + gallery])
    camids = torch.tensor([r.camid for r in query + gallery])
    q = len(query)
    rerank_cfg = config.re_ranking
    max_rank = rerank_cfg.max_rank
    ids = (pids[:q], pids[q:], camids[:q], camids[q:])
    distmat = pairwise_distance(features[:q], features[q:])
    results = {"plain": evaluate_rankings(distmat, *ids, max_rank=max(max_rank, 10))}
    final = distmat
    if rerank_cfg.re_ranking:
        final = re_ranking(torch.nn.functional.normalize(features[:q], dim=1),
                           torch.nn.functional.normalize(features[q:], dim=1),
                           k1=rerank_cfg.k1, k2=rerank_cfg.k2, lambda_value=rerank_cfg.lambda_value)
        results["re-ranked"] = evaluate_rankings(final, *ids, max_rank=max(max_rank, 10))
    log.info("results (%d queries, %d gallery images)\n%s", q, len(gallery), format_table(results))

    report = metrics_dict(results["plain"], max_rank)
    report["re_ranking"] = bool(rerank_cfg.re_ranking)
    report["precision"] = section_precision(config.evaluate)  # of the features the metrics come from
    if "re-ranked" in results:
        report["re_ranked"] = metrics_dict(results["re-ranked"], max_rank)
    atomic_write_json(results_dir / "metrics.json", report)
    plain = results["plain"]
    status.kpi = {"mAP": float(plain.mAP), "cmc_rank_1": float(plain.cmc[0]), "cmc_rank_5": float(plain.cmc[4]),
                  "cmc_rank_10": float(plain.cmc[9])}
    status.write(RUNNING, "Evaluation metrics generated.")

    curves = {name: (m.cmc[:max_rank], m.mAP) for name, m in results.items()}
    cmc_path = Path(config.evaluate.output_cmc_curve_plot or results_dir / "cmc_curve.png")
    plot_cmc_curves(curves, cmc_path)
    candidates = np.flatnonzero(queries_with_a_match(*ids))
    query_ap = results["re-ranked" if "re-ranked" in results else "plain"].query_ap  # of the ranking shown
    rows = choose_query_rows(q, rerank_cfg.num_query, seed=max(config.train.seed, 0), candidates=candidates,
                             choice=config.evaluate.sampled_matches, query_ap=query_ap)
    matches_path = Path(config.evaluate.output_sampled_matches_plot or results_dir / "sampled_matches.png")
    if len(rows):
        row_index = torch.as_tensor(rows, device=final.device)
        ranked, is_match = top_ranked(final[row_index], ids[0][rows], ids[1], ids[2][rows], ids[3], max_rank)
        plot_sampled_matches([query[i].path for i in rows], [r.path for r in gallery], ranked.cpu(),
                             is_match.cpu(), matches_path,
                             query_labels=[f"id {query[i].shown_pid} cam {query[i].camid} AP {query_ap[i]:.2f}"
                                           for i in rows])
    log.info("wrote %s, %s and %s", results_dir / "metrics.json", cmc_path, matches_path)
    return results
