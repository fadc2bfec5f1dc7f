"""export.data_type's copy of a checked fp32 graph (see precision.py): calibrated on images of a folder, and
measured against the fp32 graph on images held out of calibration (the cosine of their embeddings: what the
lower precision costs)."""

import logging
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from reid_tao.data.layouts import split_images
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.deploy.export import INPUT_NAME, OUTPUT_NAME
from reid_tao.deploy.precision import (
    CALIBRATED,
    INT8_TARGETS,
    Calibration,
    converter,
    cosine_parity,
    image_batches,
    session_runner,
)
from reid_tao.errors import DataError
from reid_tao.io.atomic import atomic_path

log = logging.getLogger(__name__)

HELD_OUT_IMAGES = 64  # calibration-folder images kept out of calibration to measure the parity on
COSINE_WARNING = 0.99  # mean cosine to the fp32 embeddings below which export warns


def calibration_split(folder: str, count: int) -> tuple[list[str], list[str]]:
    """(calibration images, held-out images) of export.calibration_dataset, in a seeded shuffle (a folder sorted
    by identity would otherwise calibrate on a few people). Up to HELD_OUT_IMAGES (a fifth of a small folder)
    are held out for the parity check; ``count`` of the rest calibrate."""
    paths = split_images(folder, "export.calibration_dataset")
    if len(paths) < 2:
        raise DataError(
            f"export.calibration_dataset: {folder} has {len(paths)} image; INT8 calibration needs at "
            "least 2 (one to calibrate on, one held out to check the result), ideally hundreds"
        )
    random.Random(0).shuffle(paths)
    held_out = max(1, min(HELD_OUT_IMAGES, len(paths) // 5))
    return paths[held_out : held_out + count], paths[:held_out]


def parity_batches(held_out: list[str], preprocessing: Preprocessing) -> tuple[Iterable, str]:
    """Held-out images when there are some, else a seeded random batch (fp16 without calibration_dataset)."""
    if held_out:
        return list(image_batches(held_out, preprocessing, 32)), f"{len(held_out)} held-out images"
    noise = torch.randn(16, 3, *preprocessing.input_size, generator=torch.Generator().manual_seed(0))
    return [noise.numpy()], "16 random inputs (set export.calibration_dataset for real images)"


def convert(
    data_type: str,
    int8_target: str,
    fp32_path: Path,
    path: Path,
    preprocessing: Preprocessing,
    images: tuple[list[str], list[str]],
    calibration_folder: str = "",
) -> dict:
    """The ``data_type`` copy of the fp32 graph at ``path`` (INT8 in ``int8_target``'s form); ``images``:
    (calibration, held-out) image paths, both empty without a calibration folder (``calibration_folder``
    names it in the log). Returns the sidecar's record of the conversion."""
    calibration_paths, held_out = images
    calibration = None
    if calibration_paths and data_type in CALIBRATED:
        log.info("calibrating %s on %d images of %s", data_type, len(calibration_paths), calibration_folder)
        calibration = Calibration(INPUT_NAME, image_batches(calibration_paths, preprocessing))
    record = {}
    if data_type == "int8":
        recipe = INT8_TARGETS[int8_target]
        log.info(
            "int8 for %s: %s, %s activations (%s), weights int8 %s",
            int8_target,
            recipe.quant_format,
            recipe.activations,
            "symmetric" if recipe.symmetric_activations else "asymmetric",
            "per channel" if recipe.per_channel else "per tensor",
        )
        record["int8_target"] = int8_target
    with atomic_path(path) as temporary:
        float_nodes = converter(data_type, int8_target)(fp32_path, temporary, calibration)
    batches, described = parity_batches(held_out, preprocessing)
    mean, minimum = cosine_parity(
        session_runner(fp32_path, INPUT_NAME, OUTPUT_NAME), session_runner(path, INPUT_NAME, OUTPUT_NAME), batches
    )
    log.info("%s vs fp32 ONNX on %s: cosine of the embeddings mean %.5f, min %.5f", data_type, described, mean, minimum)
    if mean < COSINE_WARNING:
        log.warning(
            "the %s embeddings differ from fp32 (mean cosine %.4f < %.2f): measure its accuracy with "
            "`reid evaluate -e SPEC evaluate.checkpoint=%s` (SPEC: this export's spec) before shipping it",
            data_type,
            mean,
            COSINE_WARNING,
            path,
        )
    if float_nodes:
        log.info("left in float: %s", ", ".join(float_nodes))
    return {
        **record,
        "parity_cosine_mean": mean,
        "parity_cosine_min": minimum,
        "parity_images": described,
        "float_nodes": float_nodes,
    }
