"""`reid evaluate`: Market-1501 metrics (plain and re-ranked), computed once into an EvaluationResult, then
written by the writers of tasks.evaluate_outputs (metrics.json, status.json, CMC and sampled-match plots)."""

import logging

from omegaconf import DictConfig

from reid_tao.builders import (
    checkpoint_model_config,
    extract_features,
    extraction_precision,
    load_embedding_model,
    re_ranking_arguments,
    task_checkpoint,
)
from reid_tao.data.datamodule import eval_dataset
from reid_tao.data.layouts import read_split
from reid_tao.data.records import summary_table
from reid_tao.engine.status import StatusFile
from reid_tao.errors import ConfigError
from reid_tao.evaluation.result import EvaluationResult, evaluate_features
from reid_tao.tasks.common import prepare_task, reported, write_experiment
from reid_tao.tasks.evaluate_outputs import OutputContext, write_outputs

log = logging.getLogger("reid_tao.evaluate")


def _eval_folder(config: DictConfig, own: str, fallback: str) -> tuple:
    """evaluate.<own> or, when unset, dataset.<fallback> (never inference.*: TAO mixes them, bug B6)."""
    value = config.evaluate[own] or config.dataset[fallback]
    field = f"evaluate.{own}" if config.evaluate[own] else f"dataset.{fallback}"
    if not value:
        raise ConfigError(
            f"evaluate.{own} is not set (nor dataset.{fallback}); point it to a Market-1501 folder or a list file"
        )
    return value, field


@reported("evaluate")
def run(config: DictConfig, status: StatusFile) -> EvaluationResult | None:
    results_dir = prepare_task(config, "evaluate")
    # a .pth checkpoint or an exported .onnx (fp32, fp16 or int8): the metrics of what ships
    checkpoint = task_checkpoint(config, "evaluate")
    model, preprocessing, trained = load_embedding_model(
        checkpoint, "evaluate.checkpoint", config, config.evaluate, trust=config.model.trust_weights_file
    )
    if trained is not None:  # a .pth: its config decides the model
        write_experiment(checkpoint_model_config(config, trained, "evaluate"), "evaluate")
    query_dir, query_field = _eval_folder(config, "query_dataset", "query_dataset_dir")
    gallery_dir, gallery_field = _eval_folder(config, "test_dataset", "test_dataset_dir")
    layout = config.dataset.layout
    query, gallery = read_split(query_dir, query_field, layout), read_split(gallery_dir, gallery_field, layout)
    log.info("evaluation data\n%s", summary_table({"query": query, "gallery": gallery}))

    features = extract_features(
        model, eval_dataset(query + gallery, preprocessing.eval_transform()), config, "evaluate"
    )
    if features is None:
        return None  # another process of a multi-process run: the global-zero process reports
    result = evaluate_features(features, query, gallery, config.re_ranking.max_rank, re_ranking_arguments(config))
    write_outputs(
        result,
        OutputContext(
            config, results_dir, status, extraction_precision(model, config, "evaluate"), checkpoint=checkpoint
        ),
    )
    return result
