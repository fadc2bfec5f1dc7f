"""`reid export`: ONNX with a dynamic batch axis, checked by onnx.checker and against onnxruntime; beside it the
preprocessing sidecar (read by ONNX inference) and a DeepStream tracker ReID config.

export.data_type=fp16 or int8 converts the checked fp32 graph (see engine/onnx_precision.py) and reports the
cosine of its embeddings against the fp32 graph's on held-out images: what the lower precision costs.
export.int8_target picks the INT8 file's form: tensorrt (the default) or cpu (onnxruntime on x86 CPUs)."""
import logging
import random
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from ..builders import load_trained_model, task_checkpoint
from ..config.loader import task_results_dir
from ..data.layouts import split_images
from ..data.preprocessing import Preprocessing
from ..engine.onnx_precision import (
    CALIBRATED,
    INT8_TARGETS,
    Calibration,
    converter,
    cosine_parity,
    image_batches,
    session_runner,
)
from ..engine.onnx_runner import onnx_sidecar_path, quiet_onnxruntime
from ..engine.status import StatusFile
from ..errors import ConfigError, DataError, ReidError, first_line
from ..io.atomic import atomic_path, atomic_write_json, check_output_target
from .common import prepare_task, record_checkpoint_model, reported
from .deepstream import tracker_config_path, write_tracker_config

log = logging.getLogger("reid_tao.export")

PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "fc_pred"
HELD_OUT_IMAGES = 64  # calibration-folder images kept out of calibration to measure the parity on
COSINE_WARNING = 0.99  # mean cosine to the fp32 embeddings below which export warns


class ExportError(ReidError):
    """The exported graph is invalid or disagrees with PyTorch."""

    exit_code = 1


# Below opset 9 (ONNX IR v3) the exporter writes the weights as graph inputs, which runtimes treat as inputs.
MIN_USEFUL_OPSET = 9


def supported_opsets() -> range:
    """The opsets torch's TorchScript exporter writes (from torch itself), from MIN_USEFUL_OPSET up."""
    from torch.onnx import _constants

    low = max(getattr(_constants, "ONNX_MIN_OPSET", MIN_USEFUL_OPSET), MIN_USEFUL_OPSET)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return range(low, high + 1)


def onnxruntime_runs_opset(opset: int) -> bool:
    """Whether this onnxruntime loads a model of `opset` (asked of onnxruntime with a one-node graph)."""
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's Fail / InvalidGraph / ... derive from Exception only
        return False
    return True


def check_opset(opset: int) -> None:
    """export.opset within what the exporter writes and onnxruntime (the parity check) loads, else one line."""
    opsets = supported_opsets()
    if opset not in opsets or not onnxruntime_runs_opset(opset):
        usable = [value for value in (opsets[0], opsets[-1]) if onnxruntime_runs_opset(value)]
        shown = f"{usable[0]}..{usable[-1]}" if usable else f"{opsets[0]}..{opsets[-1]}"
        raise ConfigError(f"export.opset={opset} is not supported: torch {torch.__version__}'s ONNX exporter and "
                          f"this onnxruntime support opsets {shown} (below {MIN_USEFUL_OPSET} the weights become "
                          f"graph inputs); choose one in {shown}, e.g. 17")


def onnx_path_for(config: DictConfig, checkpoint: str) -> Path:
    """export.onnx_file, by default in export's results folder, named after the checkpoint and the data type:
    results_dir/export/reid_model_latest.onnx, ..._int8.onnx, ..._int8_cpu.onnx (export.int8_target=cpu); not
    beside the checkpoint, in train/."""
    if config.export.onnx_file:
        return Path(config.export.onnx_file)
    data_type = config.export.data_type
    suffix = "" if data_type == "fp32" else f"_{data_type}"
    if data_type == "int8" and config.export.get("int8_target", "tensorrt") != "tensorrt":
        suffix += f"_{config.export.int8_target}"
    return task_results_dir(config, "export") / f"{Path(checkpoint).stem}{suffix}.onnx"


def calibration_split(folder: str, count: int) -> Tuple[List[str], List[str]]:
    """(calibration images, held-out images) of export.calibration_dataset, in a seeded shuffle (a folder sorted
    by identity would otherwise calibrate on a few people). Up to HELD_OUT_IMAGES (a fifth of a small folder)
    are held out for the parity check; ``count`` of the rest calibrate."""
    paths = split_images(folder, "export.calibration_dataset")
    if len(paths) < 2:
        raise DataError(f"export.calibration_dataset: {folder} has {len(paths)} image; INT8 calibration needs at "
                        "least 2 (one to calibrate on, one held out to check the result), ideally hundreds")
    random.Random(0).shuffle(paths)
    held_out = max(1, min(HELD_OUT_IMAGES, len(paths) // 5))
    return paths[held_out:held_out + count], paths[:held_out]


def parity_batches(held_out: List[str], preprocessing: Preprocessing) -> Tuple[Iterable, str]:
    """Held-out images when there are some, else a seeded random batch (fp16 without calibration_dataset)."""
    if held_out:
        return list(image_batches(held_out, preprocessing, 32)), f"{len(held_out)} held-out images"
    noise = torch.randn(16, 3, *preprocessing.input_size, generator=torch.Generator().manual_seed(0))
    return [noise.numpy()], "16 random inputs (set export.calibration_dataset for real images)"


def convert(section: DictConfig, fp32_path: Path, path: Path, preprocessing: Preprocessing,
            images: Tuple[List[str], List[str]]) -> dict:
    """export.data_type's copy of the fp32 graph at ``path``; ``images``: (calibration, held-out) image paths
    (both empty without export.calibration_dataset). Returns the sidecar's record of the conversion."""
    data_type = section.data_type
    calibration_paths, held_out = images
    calibration = None
    if calibration_paths and data_type in CALIBRATED:
        log.info("calibrating %s on %d images of %s", data_type, len(calibration_paths), section.calibration_dataset)
        calibration = Calibration(INPUT_NAME, image_batches(calibration_paths, preprocessing))
    record = {}
    if data_type == "int8":
        recipe = INT8_TARGETS[section.int8_target]
        log.info("int8 for %s: %s, %s activations (%s), weights int8 %s", section.int8_target, recipe.quant_format,
                 recipe.activations, "symmetric" if recipe.symmetric_activations else "asymmetric",
                 "per channel" if recipe.per_channel else "per tensor")
        record["int8_target"] = section.int8_target
    with atomic_path(path) as temporary:
        float_nodes = converter(data_type, section.int8_target)(fp32_path, temporary, calibration)
    batches, described = parity_batches(held_out, preprocessing)
    mean, minimum = cosine_parity(session_runner(fp32_path, INPUT_NAME, OUTPUT_NAME),
                                  session_runner(path, INPUT_NAME, OUTPUT_NAME), batches)
    log.info("%s vs fp32 ONNX on %s: cosine of the embeddings mean %.5f, min %.5f", data_type, described, mean,
             minimum)
    if mean < COSINE_WARNING:
        log.warning("the %s embeddings differ from fp32 (mean cosine %.4f < %.2f): measure its accuracy with "
                    "`reid evaluate -e SPEC evaluate.checkpoint=%s` (SPEC: this export's spec) before shipping it",
                    data_type, mean, COSINE_WARNING, path)
    if float_nodes:
        log.info("left in float: %s", ", ".join(float_nodes))
    return {**record, "parity_cosine_mean": mean, "parity_cosine_min": minimum, "parity_images": described,
            "float_nodes": float_nodes}


def export_onnx(model: torch.nn.Module, path: Path, input_size, opset: int) -> None:
    """Trace on the CPU with a batch of 2 and a dynamic batch axis; written atomically."""
    example = torch.randn(2, 3, *input_size)
    with atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(temporary), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def parity_check(model: torch.nn.Module, path: Path, input_size, batch: int = 3) -> float:
    """Max abs difference between onnxruntime and PyTorch on a random batch (other than the traced size)."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    images = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch {expected.shape}")
    return float(np.abs(actual - expected).max())


@reported("export")
def run(config: DictConfig, status: StatusFile) -> Path:
    prepare_task(config, "export")
    quiet_onnxruntime()
    section = config.export
    check_opset(section.opset)
    checkpoint = task_checkpoint(config, "export")
    model, preprocessing, trained_config = load_trained_model(checkpoint, "export.checkpoint",
                                                              config, trust=config.model.trust_weights_file)
    record_checkpoint_model(config, trained_config, "export")
    path = onnx_path_for(config, checkpoint)
    if path in (onnx_sidecar_path(path), tracker_config_path(path)):  # e.g. model.json: the sidecar is model.json
        raise ConfigError(f"export.onnx_file {path}: the preprocessing sidecar {onnx_sidecar_path(path).name} and "
                          f"the tracker config {tracker_config_path(path).name} are written beside it, so it would "
                          "be overwritten; name the model file *.onnx")
    for target in (path, onnx_sidecar_path(path), tracker_config_path(path)):  # all three before any is written
        check_output_target(target)
    if path.exists() and not section.overwrite:
        raise ConfigError(f"export.onnx_file {path} already exists; set export.overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if section.gpu_id != 0:
        log.info("export runs on the CPU; export.gpu_id=%d is not needed", section.gpu_id)
    model = model.cpu().eval()
    input_size = preprocessing.input_size
    # read the calibration folder first: a bad one stops export before any work
    images = (calibration_split(section.calibration_dataset, section.calibration_images)
              if section.calibration_dataset and section.data_type != "fp32" else ([], []))
    with tempfile.TemporaryDirectory(prefix="reid_export_") as scratch:
        # fp32 is written in place; another data type is converted from a checked fp32 graph in scratch.
        fp32_path = path if section.data_type == "fp32" else Path(scratch) / "fp32.onnx"
        try:
            export_onnx(model, fp32_path, input_size, section.opset)
        except torch.onnx.errors.OnnxExporterError as error:  # an operator without a form in this opset
            raise ExportError(f"cannot export at export.opset={section.opset}: {first_line(error)}; "
                              "try a newer opset, e.g. 17") from None
        difference = parity_check(model, fp32_path, input_size)
        log.info("onnxruntime vs PyTorch: max abs difference %.2e (tolerance %.0e)", difference, PARITY_TOLERANCE)
        if difference > PARITY_TOLERANCE:
            fp32_path.unlink()
            raise ExportError(f"exported model disagrees with PyTorch (max abs difference {difference:.2e} > "
                              f"{PARITY_TOLERANCE:.0e}); the ONNX file was removed")
        precision = {} if section.data_type == "fp32" else convert(section, fp32_path, path, preprocessing, images)
    # The sidecar holds the Preprocessing fields (Preprocessing.from_dict reads it back) plus the graph's names.
    sidecar = {
        "onnx_file": path.name, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, *input_size], "color": "RGB", "scale": 1 / 255, **preprocessing.to_dict(),
        "feature_dim": model.feat_dim, "backbone": trained_config.model.backbone, "opset": section.opset,
        "data_type": section.data_type, "parity_max_abs_diff": difference, **precision,
    }
    atomic_write_json(onnx_sidecar_path(path), sidecar)
    if section.data_type == "int8" and section.int8_target != "tensorrt":
        log.info("wrote %s and %s; no DeepStream tracker config: TensorRT refuses export.int8_target=%s files "
                 "(export.int8_target=tensorrt writes one)", path, onnx_sidecar_path(path), section.int8_target)
        return path
    tracker_config = write_tracker_config(tracker_config_path(path), preprocessing, model.feat_dim, path,
                                          section.data_type)
    log.info("wrote %s, %s and the DeepStream tracker ReID config %s", path, onnx_sidecar_path(path), tracker_config)
    return path
