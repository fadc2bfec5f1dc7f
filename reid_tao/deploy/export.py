"""The model as an fp32 ONNX graph with a dynamic batch axis, checked by onnx.checker and against PyTorch
through onnxruntime."""

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from reid_tao.errors import ReidError, first_line
from reid_tao.io.atomic import atomic_path

PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "fc_pred"

log = logging.getLogger(__name__)


class ExportError(ReidError):
    """The exported graph is invalid or disagrees with PyTorch."""

    exit_code = 1


def export_onnx(model: torch.nn.Module, path: Path, input_size, opset: int) -> None:
    """Trace on the CPU with a batch of 2 and a dynamic batch axis; written atomically."""
    example = torch.randn(2, 3, *input_size)
    with atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(temporary),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


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


def export_checked(model: torch.nn.Module, path: Path, input_size, opset: int) -> float:
    """:func:`export_onnx` then :func:`parity_check`; returns the difference, or removes the file and raises
    ExportError when it is over PARITY_TOLERANCE (or the opset has no form of an operator)."""
    try:
        export_onnx(model, path, input_size, opset)
    except torch.onnx.errors.OnnxExporterError as error:  # an operator without a form in this opset
        raise ExportError(
            f"cannot export at export.opset={opset}: {first_line(error)}; try a newer opset, e.g. 17"
        ) from None
    difference = parity_check(model, path, input_size)
    log.info("onnxruntime vs PyTorch: max abs difference %.2e (tolerance %.0e)", difference, PARITY_TOLERANCE)
    if difference > PARITY_TOLERANCE:
        path.unlink()
        raise ExportError(
            f"exported model disagrees with PyTorch (max abs difference {difference:.2e} > "
            f"{PARITY_TOLERANCE:.0e}); the ONNX file was removed"
        )
    return difference
