"""`reid inference`: one embedding per image of inference.query_dataset then inference.test_dataset."""
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import List

from omegaconf import DictConfig

from ..data.datasets import ImageDataset
from ..data.market import list_images
from ..data.transforms import build_eval_transform
from ..engine.checkpoint import load_model_from_checkpoint
from ..errors import ConfigError
from ..engine.extractor import extract
from .common import prepare_task

log = logging.getLogger("reid_tao.inference")


def inference_images(config: DictConfig) -> List[str]:
    """Every image of the query folder then the test folder, each sorted by path (names need not be Market's)."""
    section = config.inference
    if not section.query_dataset and not section.test_dataset:
        raise ConfigError("set inference.query_dataset and/or inference.test_dataset to folders of images")
    paths: List[str] = []
    for field in ("query_dataset", "test_dataset"):
        if section[field]:
            paths += [str(p) for p in list_images(section[field], f"inference.{field}")]
    return paths


def write_embeddings_json(path: Path, image_paths: List[str], batches) -> int:
    """Stream `[{"img_path": ..., "embedding": [...]}, ...]` into a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    written = 0
    try:
        with os.fdopen(handle, "w") as out:
            out.write("[")
            for features in batches:
                for row in features.tolist():
                    out.write(",\n" if written else "\n")
                    json.dump({"img_path": image_paths[written], "embedding": row}, out)
                    written += 1
            out.write("\n]\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return written


def run(config: DictConfig) -> Path:
    results_dir = prepare_task(config, "inference")
    model, meta = load_model_from_checkpoint(config.inference.checkpoint, "inference.checkpoint")
    image_paths = inference_images(config)
    transform = build_eval_transform(tuple(meta["input_size"]), meta["pixel_mean"], meta["pixel_std"],
                                     meta.get("interpolation", "bilinear"))
    dataset = ImageDataset(image_paths, [0] * len(image_paths), [0] * len(image_paths), transform)
    features = extract(model, dataset, config.inference, config.dataset.val_batch_size,
                       config.dataset.num_workers, config.model.with_flip_feature)
    if features is None:
        return None  # another process of a multi-process run: the global-zero process writes the file
    output = Path(config.inference.output_file or results_dir / "inference.json")
    count = write_embeddings_json(output, image_paths, features.cpu().split(1024))
    log.info("wrote %d embeddings (%d-d) to %s", count, meta["feat_dim"], output)
    return output
