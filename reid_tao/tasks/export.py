"""`reid export`: ONNX with a dynamic batch axis, checked by onnx.checker and against onnxruntime; beside it the
preprocessing sidecar (read by ONNX inference) and a DeepStream tracker ReID config."""
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ..build import load_trained_model, task_checkpoint
from ..engine.onnx_runner import onnx_sidecar_path
from ..engine.status import StatusFile
from ..errors import ConfigError, ReidError
from ..io import atomic_path, atomic_write_json
from .common import prepare_task, reported
from .deepstream import tracker_config_path, write_tracker_config

log = logging.getLogger("reid_tao.export")

PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "fc_pred"


class ExportError(ReidError):
    """The exported graph is invalid or disagrees with PyTorch."""

    exit_code = 1


def onnx_path_for(config: DictConfig, checkpoint: str) -> Path:
    """export.onnx_file, by default beside the checkpoint (as TAO does)."""
    if config.export.onnx_file:
        return Path(config.export.onnx_file)
    return Path(checkpoint).with_suffix(".onnx")


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
    section = config.export
    checkpoint = task_checkpoint(config, "export")
    model, preprocessing, trained_config = load_trained_model(checkpoint, "export.checkpoint",
                                                              config, trust=config.model.trust_weights_file)
    path = onnx_path_for(config, checkpoint)
    if path in (onnx_sidecar_path(path), tracker_config_path(path)):  # e.g. model.json: the sidecar is model.json
        raise ConfigError(f"export.onnx_file {path}: the preprocessing sidecar {onnx_sidecar_path(path).name} and "
                          f"the tracker config {tracker_config_path(path).name} are written beside it, so it would "
                          "be overwritten; name the model file *.onnx")
    if path.exists() and not section.overwrite:
        raise ConfigError(f"export.onnx_file {path} already exists; set export.overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if section.gpu_id != 0:
        log.info("export runs on the CPU; export.gpu_id=%d is not needed", section.gpu_id)
    model = model.cpu().eval()
    input_size = preprocessing.input_size
    export_onnx(model, path, input_size, section.opset)
    difference = parity_check(model, path, input_size)
    log.info("onnxruntime vs PyTorch: max abs difference %.2e (tolerance %.0e)", difference, PARITY_TOLERANCE)
    if difference > PARITY_TOLERANCE:
        path.unlink()
        raise ExportError(f"exported model disagrees with PyTorch (max abs difference {difference:.2e} > "
                          f"{PARITY_TOLERANCE:.0e}); the ONNX file was removed")
    # The sidecar holds the Preprocessing fields (Preprocessing.from_dict reads it back) plus the graph's names.
    sidecar = {
        "onnx_file": path.name, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, *input_size], "color": "RGB", "scale": 1 / 255, **preprocessing.to_dict(),
        "feature_dim": model.feat_dim, "backbone": trained_config.model.backbone, "opset": section.opset,
        "parity_max_abs_diff": difference,
    }
    atomic_write_json(onnx_sidecar_path(path), sidecar)
    tracker_config = write_tracker_config(tracker_config_path(path), preprocessing, model.feat_dim, path)
    log.info("wrote %s, %s and the DeepStream tracker ReID config %s", path, onnx_sidecar_path(path), tracker_config)
    return path
