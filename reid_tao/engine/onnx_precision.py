"""Lower-precision copies of an exported fp32 ONNX model: fp16 (onnxconverter-common) and INT8 (static
post-training quantization with onnxruntime.quantization, explicit QuantizeLinear/DequantizeLinear pairs).

One QDQ INT8 file serves onnxruntime on a CPU and TensorRT (DeepStream) in INT8 mode: the scales are in the
graph, so no calibration cache travels with it. Activations and weights are signed 8-bit and symmetric
(zero point 0), the form TensorRT accepts; weights per output channel.

Which layers stay in float was decided by measuring the cosine of INT8 and fp32 embeddings (see
docs/deployment.md): :data:`FLOAT_LAYERS` names them, :func:`float_node_names` finds them in a graph.
"""
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.datamodule import eval_loader
from ..data.datasets import ImageDataset
from ..data.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class Calibration(NamedTuple):
    input_name: str  # the graph input the batches feed
    batches: Iterable[np.ndarray]  # normalised (N, 3, H, W) float32 images, read once


# ------------------------------------------------------------------------------------------ fp32, fp16
def keep_fp32(source: Path, target: Path, calibration: Optional[Calibration] = None) -> List[str]:
    shutil.copyfile(source, target)
    return []


def convert_fp16(source: Path, target: Path, calibration: Optional[Calibration] = None) -> List[str]:
    """fp16 weights and arithmetic; inputs and outputs stay float32 (keep_io_types), so callers and the
    sidecar are unchanged. Returns the nodes left in float32 (none)."""
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per tiny weight rounded to fp16's smallest value
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return []


# ------------------------------------------------------------------------------------------------ INT8
def first_conv(graph) -> List[str]:
    """The stem convolution: it sees the raw normalised pixels, whose range one scale covers badly."""
    return [node.name for node in graph.node if node.op_type == "Conv"][:1]


def embedding_head(graph) -> List[str]:
    """The nodes after the last convolution: pooling, the reduction linear and the BNNeck (which the
    pre-processing folds into that linear, one Gemm). Little arithmetic, and every rounding error there lands
    directly in the embedding."""
    names = [node.name for node in graph.node]
    last_conv = max((i for i, node in enumerate(graph.node) if node.op_type == "Conv"), default=-1)
    return names[last_conv + 1:]


# name -> the rule that finds those nodes in a pre-processed graph. DEFAULT_FLOAT_LAYERS: what export keeps in
# float, decided by measurement (docs/deployment.md: the stem conv is most of the loss).
FLOAT_LAYERS: Dict[str, Callable] = {"first_conv": first_conv, "embedding_head": embedding_head}
DEFAULT_FLOAT_LAYERS = ("first_conv", "embedding_head")


def float_node_names(model_path: Path, layers: Sequence[str]) -> List[str]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    names: List[str] = []
    for layer in layers:
        names += [name for name in FLOAT_LAYERS[layer](graph) if name not in names]
    return names


def image_batches(paths: Sequence[str], preprocessing: Preprocessing, batch_size: int = 16) -> Iterator[np.ndarray]:
    """Normalised (N, 3, H, W) float32 arrays of ``paths``, read and transformed as evaluation does."""
    dataset = ImageDataset(paths, [0] * len(paths), [0] * len(paths), preprocessing.eval_transform())
    with torch.no_grad():
        for batch in eval_loader(dataset, batch_size, 0):
            yield np.ascontiguousarray(batch.images.numpy(), dtype=np.float32)


def calibration_reader(input_name: str, batches: Iterable[np.ndarray]):
    """An onnxruntime CalibrationDataReader over ready batches (it is read once, by the calibrator)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def quantize_int8(source: Path, target: Path, calibration: Optional[Calibration],
                  float_layers: Sequence[str] = DEFAULT_FLOAT_LAYERS) -> List[str]:
    """Static QDQ INT8 copy of ``source``, calibrated (min/max) on ``calibration`` batches. BatchNorms are
    folded into their convolutions first (onnxruntime's quantization pre-processing), so the INT8 convolution
    carries the BN; ``float_layers`` (keys of :data:`FLOAT_LAYERS`) are left in float. Returns those nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        raise ValueError("INT8 quantization needs calibration images")
    with tempfile.TemporaryDirectory(prefix="reid_quant_") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = float_node_names(prepared, float_layers)
        quantize_static(str(prepared), str(target), calibration_reader(*calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return excluded


# export.data_type -> converter (fp32 source, target, calibration or None) -> nodes left in float.
DATA_TYPES: Dict[str, Callable[[Path, Path, Optional[Calibration]], List[str]]] = {
    "fp32": keep_fp32, "fp16": convert_fp16, "int8": quantize_int8}
CALIBRATED = ("int8",)  # the data types that need calibration images


# ----------------------------------------------------------------------------------------------- parity
def cosine_parity(reference, candidate, batches: Iterable[np.ndarray]) -> Tuple[float, float]:
    """(mean, min) cosine similarity of the embeddings two callables (array -> array) give the same images."""
    cosines = []
    for batch in batches:
        a, b = np.asarray(reference(batch), dtype=np.float64), np.asarray(candidate(batch), dtype=np.float64)
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        cosines.append((a * b).sum(axis=1) / norms)
    values = np.concatenate(cosines)
    return float(values.mean()), float(values.min())


def session_runner(path: Path, input_name: str, output_name: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run([output_name], {input_name: batch})[0]
