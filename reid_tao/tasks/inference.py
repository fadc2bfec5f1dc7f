"""`reid inference`: one embedding per image of inference.query_dataset then inference.test_dataset."""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from reid_tao.builders import checkpoint_model_config, feature_batches, load_embedding_model, task_checkpoint
from reid_tao.data.datasets import ImageDataset
from reid_tao.data.layouts import split_images
from reid_tao.engine.status import StatusFile
from reid_tao.errors import ConfigError
from reid_tao.io.atomic import atomic_output
from reid_tao.tasks.common import prepare_task, reported, write_experiment

log = logging.getLogger("reid_tao.inference")


def _inference_folders(config: DictConfig) -> list[tuple[str, str]]:
    """(folder, spec field) pairs: inference.query_dataset / test_dataset, or, when neither is set,
    dataset.query_dataset_dir / test_dataset_dir (as evaluate; never evaluate.*)."""
    section, data = config.inference, config.dataset
    own = [(section[f], f"inference.{f}") for f in ("query_dataset", "test_dataset") if section[f]]
    if own:
        return own
    fallback = [(data[f], f"dataset.{f}") for f in ("query_dataset_dir", "test_dataset_dir") if data[f]]
    if not fallback:
        raise ConfigError(
            "set inference.query_dataset and/or inference.test_dataset (or dataset.query_dataset_dir "
            "/ test_dataset_dir) to folders of images or list files"
        )
    log.info("inference.query_dataset and test_dataset are not set: using %s", ", ".join(f for _, f in fallback))
    return fallback


def _inference_images(config: DictConfig) -> list[str]:
    """Every image of the query split then the test split: a folder's sorted by path (names need not be
    Market's), a list file's in file order."""
    paths: list[str] = []
    for folder, field in _inference_folders(config):
        paths += split_images(folder, field, config.dataset.layout)
    return paths


def _write_embeddings_json(path: Path, image_paths: list[str], batches) -> int:
    """Stream `[{"img_path": ..., "embedding": [...]}, ...]` into a temporary file, then rename it into place."""
    written = 0
    with atomic_output(path) as out:
        out.write("[")
        for features in batches:
            for row in features.tolist():
                out.write(",\n" if written else "\n")
                json.dump({"img_path": image_paths[written], "embedding": row}, out)
                written += 1
        out.write("\n]\n")
    return written


def _output_path(config: DictConfig, results_dir: Path) -> Path:
    return Path(config.inference.output_file or results_dir / "inference.json")


@reported("inference")
def run(config: DictConfig, status: StatusFile) -> Path | None:
    results_dir = prepare_task(config, "inference")
    # a .pth checkpoint, or an exported .onnx: onnxruntime in this process, preprocessing from the sidecar
    # export wrote beside the model (not from the spec), features streamed batch by batch
    checkpoint = task_checkpoint(config, "inference")
    model, preprocessing, trained = load_embedding_model(
        checkpoint, "inference.checkpoint", config, config.inference, trust=config.model.trust_weights_file
    )
    if trained is not None:  # a .pth: its config decides the model
        write_experiment(checkpoint_model_config(config, trained, "inference"), "inference")
    image_paths = _inference_images(config)
    dataset = ImageDataset(image_paths, [0] * len(image_paths), [0] * len(image_paths), preprocessing.eval_transform())
    batches = feature_batches(model, dataset, config, "inference")
    if batches is None:
        return None  # another process of a multi-process run: the global-zero process writes the file
    output = _output_path(config, results_dir)
    count = _write_embeddings_json(output, image_paths, batches)
    log.info("wrote %d embeddings (%d-d) to %s", count, model.feat_dim, output)
    return output
