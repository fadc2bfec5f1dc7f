"""Features of a dataset with a task's settings (<task>.batch_size, devices, precision; dataset.num_workers;
model.with_flip_feature), from either kind of embedding model: a PyTorch model through Lightning's predict
loop (engine.extractor) or an exported ONNX model in this process (deploy.runtime)."""

import logging
from collections.abc import Callable, Iterable

import torch
from omegaconf import DictConfig

from reid_tao.builders.training import extraction_batch_size
from reid_tao.data.datasets import ImageDataset
from reid_tao.deploy.runtime import OnnxModel, onnx_feature_batches
from reid_tao.engine.extractor import extract, section_precision

log = logging.getLogger(__name__)
HOST_BATCH = 1024  # rows a PyTorch model's gathered features are handed on in (e.g. to a JSON writer)


def _onnx_batches(model: OnnxModel, dataset: ImageDataset, config: DictConfig, task: str) -> Iterable[torch.Tensor]:
    if config[task].num_gpus > 1:
        log.info("ONNX %s runs in one process; %s.num_gpus=%d is not used", task, task, config[task].num_gpus)
    return onnx_feature_batches(
        model, dataset, extraction_batch_size(config, task), config.dataset.num_workers, config.model.with_flip_feature
    )


def extract_features(model: Callable, dataset: ImageDataset, config: DictConfig, task: str) -> torch.Tensor | None:
    """(N, D) float32 features in dataset order (see engine.extractor.extract); None on the processes other
    than global zero of a multi-process run."""
    if isinstance(model, OnnxModel):
        return torch.cat(list(_onnx_batches(model, dataset, config, task)))
    return extract(
        model,
        dataset,
        config[task],
        extraction_batch_size(config, task),
        config.dataset.num_workers,
        config.model.with_flip_feature,
    )


def feature_batches(
    model: Callable, dataset: ImageDataset, config: DictConfig, task: str
) -> Iterable[torch.Tensor] | None:
    """The features batch by batch on the host, in dataset order: an ONNX model's streamed (never all held),
    a PyTorch model's gathered then split; None on the processes other than global zero."""
    if isinstance(model, OnnxModel):
        return _onnx_batches(model, dataset, config, task)
    features = extract_features(model, dataset, config, task)
    return None if features is None else features.cpu().split(HOST_BATCH)


def extraction_precision(model: Callable, config: DictConfig, task: str) -> str:
    """The precision the features were computed in: an exported model's data type (fp32, fp16, int8), else
    <task>.precision resolved on the task's device."""
    if isinstance(model, OnnxModel):
        return model.data_type
    return section_precision(config[task])
