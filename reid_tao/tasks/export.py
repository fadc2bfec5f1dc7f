"""`reid export`: ONNX with a dynamic batch axis, checked by onnx.checker and against onnxruntime; beside it the
preprocessing sidecar (read by ONNX inference) and a DeepStream tracker ReID config.

export.data_type=fp16 or int8 converts the checked fp32 graph (see deploy/convert.py) and reports the
cosine of its embeddings against the fp32 graph's on held-out images: what the lower precision costs.
export.int8_target picks the INT8 file's form: tensorrt (the default) or cpu (onnxruntime on x86 CPUs)."""

import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from reid_tao.builders import checkpoint_model_config, load_trained_model, onnx_path_for, task_checkpoint
from reid_tao.deploy.convert import calibration_split, convert
from reid_tao.deploy.deepstream import tracker_config_path, write_tracker_config
from reid_tao.deploy.export import INPUT_NAME, OUTPUT_NAME, export_checked
from reid_tao.deploy.opsets import check_opset
from reid_tao.deploy.runtime import onnx_sidecar_path, quiet_onnxruntime
from reid_tao.engine.status import StatusFile
from reid_tao.errors import ConfigError
from reid_tao.io.atomic import atomic_write_json, check_output_target
from reid_tao.tasks.common import prepare_task, reported, write_experiment

log = logging.getLogger("reid_tao.export")


@reported("export")
def run(config: DictConfig, status: StatusFile) -> Path:
    prepare_task(config, "export")
    quiet_onnxruntime()
    section = config.export
    check_opset(section.opset)
    checkpoint = task_checkpoint(config, "export")
    model, preprocessing, trained_config = load_trained_model(
        checkpoint, "export.checkpoint", config, trust=config.model.trust_weights_file
    )
    write_experiment(checkpoint_model_config(config, trained_config, "export"), "export")
    path = onnx_path_for(config, checkpoint)
    if path in (onnx_sidecar_path(path), tracker_config_path(path)):  # e.g. model.json: the sidecar is model.json
        raise ConfigError(
            f"export.onnx_file {path}: the preprocessing sidecar {onnx_sidecar_path(path).name} and "
            f"the tracker config {tracker_config_path(path).name} are written beside it, so it would "
            "be overwritten; name the model file *.onnx"
        )
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
    images = (
        calibration_split(section.calibration_dataset, section.calibration_images)
        if section.calibration_dataset and section.data_type != "fp32"
        else ([], [])
    )
    with tempfile.TemporaryDirectory(prefix="reid_export_") as scratch:
        # fp32 is written in place; another data type is converted from a checked fp32 graph in scratch.
        fp32_path = path if section.data_type == "fp32" else Path(scratch) / "fp32.onnx"
        difference = export_checked(model, fp32_path, input_size, section.opset)
        precision = (
            {}
            if section.data_type == "fp32"
            else convert(
                section.data_type,
                section.int8_target,
                fp32_path,
                path,
                preprocessing,
                images,
                section.calibration_dataset,
            )
        )
    # The sidecar holds the Preprocessing fields (Preprocessing.from_dict reads it back) plus the graph's names.
    sidecar = {
        "onnx_file": path.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, *input_size],
        "color": "RGB",
        "scale": 1 / 255,
        **preprocessing.to_dict(),
        "feature_dim": model.feat_dim,
        "backbone": trained_config.model.backbone,
        "opset": section.opset,
        "data_type": section.data_type,
        "parity_max_abs_diff": difference,
        **precision,
    }
    atomic_write_json(onnx_sidecar_path(path), sidecar)
    if section.data_type == "int8" and section.int8_target != "tensorrt":
        log.info(
            "wrote %s and %s; no DeepStream tracker config: TensorRT refuses export.int8_target=%s files "
            "(export.int8_target=tensorrt writes one)",
            path,
            onnx_sidecar_path(path),
            section.int8_target,
        )
        return path
    tracker_config = write_tracker_config(
        tracker_config_path(path), preprocessing, model.feat_dim, path, section.data_type
    )
    log.info("wrote %s, %s and the DeepStream tracker ReID config %s", path, onnx_sidecar_path(path), tracker_config)
    return path
