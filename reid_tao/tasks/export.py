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
from ..io import atomic_path, atomic_write_json, first_line
from .common import prepare_task, record_checkpoint_model, reported
from .deepstream import tracker_config_path, write_tracker_config

log = logging.getLogger("reid_tao.export")

PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "fc_pred"


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
    check_opset(section.opset)
    checkpoint = task_checkpoint(config, "export")
    model, preprocessing, trained_config = load_trained_model(checkpoint, "export.checkpoint",
                                                              config, trust=config.model.trust_weights_file)
    record_checkpoint_model(config, trained_config, "export")
    path = onnx_path_for(config, checkpoint)
    if path.exists() and not section.overwrite:
        raise ConfigError(f"export.onnx_file {path} already exists; set export.overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if section.gpu_id != 0:
        log.info("export runs on the CPU; export.gpu_id=%d is not needed", section.gpu_id)
    model = model.cpu().eval()
    input_size = preprocessing.input_size
    try:
        export_onnx(model, path, input_size, section.opset)
    except torch.onnx.errors.OnnxExporterError as error:  # an operator without a form in this opset
        raise ExportError(f"cannot export at export.opset={section.opset}: {first_line(error)}; "
                          "try a newer opset, e.g. 17") from None
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
