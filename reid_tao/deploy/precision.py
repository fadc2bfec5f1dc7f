"""Lower-precision copies of an exported fp32 ONNX model: fp16 (onnxconverter-common) and INT8 (static
post-training quantization with onnxruntime.quantization).

INT8 has two targets (export.int8_target), one :class:`Int8Recipe` each in :data:`INT8_TARGETS`:

- ``tensorrt`` (the default): explicit QuantizeLinear/DequantizeLinear pairs, activations and weights signed
  8-bit and symmetric (zero point 0), the form TensorRT accepts; weights per output channel. The scales are in
  the graph, so no calibration cache travels with it; onnxruntime runs it too, but slowly on x86 CPUs.
- ``cpu``: what onnxruntime's x86 CPU kernels run fastest, chosen by measurement (docs/benchmarks.md):
  unsigned asymmetric activations with signed weights (U8S8), a graph onnxruntime turns into QLinearConv /
  QLinearAdd throughout, the stem conv included. TensorRT refuses it (its zero points are not 0).

Which layers stay in float was decided by measuring the cosine of INT8 and fp32 embeddings (see
docs/deployment.md): :data:`FLOAT_LAYERS` names them, :func:`float_node_names` finds them in a graph.
"""

import functools
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from reid_tao.data.datamodule import eval_loader
from reid_tao.data.datasets import ImageDataset
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.deploy.runtime import quiet_onnxruntime

log = logging.getLogger(__name__)


class Calibration(NamedTuple):
    input_name: str  # the graph input the batches feed
    batches: Iterable[np.ndarray]  # normalised (N, 3, H, W) float32 images, read once


# ------------------------------------------------------------------------------------------ fp32, fp16
def keep_fp32(source: Path, target: Path, calibration: Calibration | None = None) -> list[str]:
    shutil.copyfile(source, target)
    return []


def convert_fp16(source: Path, target: Path, calibration: Calibration | None = None) -> list[str]:
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
def first_conv(graph) -> list[str]:
    """The stem convolution: it sees the raw normalised pixels, whose range one scale covers badly."""
    return [node.name for node in graph.node if node.op_type == "Conv"][:1]


def embedding_head(graph) -> list[str]:
    """The nodes after the last convolution: pooling, the reduction linear and the BNNeck (which the
    pre-processing folds into that linear, one Gemm). Little arithmetic, and every rounding error there lands
    directly in the embedding."""
    names = [node.name for node in graph.node]
    last_conv = max((i for i, node in enumerate(graph.node) if node.op_type == "Conv"), default=-1)
    return names[last_conv + 1 :]


# name -> the rule that finds those nodes in a pre-processed graph. DEFAULT_FLOAT_LAYERS: what export keeps in
# float, decided by measurement (docs/deployment.md: the stem conv is most of the loss).
FLOAT_LAYERS: dict[str, Callable] = {"first_conv": first_conv, "embedding_head": embedding_head}
DEFAULT_FLOAT_LAYERS = ("first_conv", "embedding_head")


def float_node_names(model_path: Path, layers: Sequence[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    names: list[str] = []
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

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


class Int8Recipe(NamedTuple):
    """How :func:`quantize_int8` writes a file: onnxruntime.quantization's choices and the nodes left in float."""

    quant_format: str = "QDQ"  # QDQ (Quantize/DequantizeLinear pairs) | QOperator (QLinearConv, ... in the file)
    activations: str = "int8"  # int8 | uint8
    symmetric_activations: bool = True  # zero point 0: TensorRT's form
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights: no saturation in AVX2's u8 x s8 pair sums (CPUs without VNNI)
    float_layers: tuple[str, ...] = DEFAULT_FLOAT_LAYERS  # keys of FLOAT_LAYERS
    optimization: str = ""  # "" | "basic" | "extended": save onnxruntime's graph at that level (CPU-only file)


QUANT_FORMATS = ("QDQ", "QOperator")
ACTIVATION_TYPES = ("int8", "uint8")
# The levels whose output onnxruntime documents as portable between CPUs ("all" adds layouts for this CPU's
# vector width, so a file saved at "all" is only for the machine that wrote it).
SAVED_OPTIMIZATIONS = ("", "basic", "extended")

# export.int8_target -> recipe. cpu was chosen by measurement on an AVX2 CPU (docs/benchmarks.md, "INT8 for
# TensorRT vs INT8 for the CPU"): with unsigned activations onnxruntime fuses every convolution into an integer
# QLinearConv (with tensorrt's symmetric signed ones each ReLU stays between its convolution and the
# QuantizeLinear, and most convolutions run in float between a Dequantize and a Quantize). The stem conv is
# quantized too: the asymmetric range covers the normalised pixels, and a float stem cost speed for little
# accuracy. QOperator, a saved optimised graph and reduce_range were no faster; per-tensor weights and a
# quantized head lost cosine.
INT8_TARGETS: dict[str, Int8Recipe] = {
    "tensorrt": Int8Recipe(),
    "cpu": Int8Recipe(activations="uint8", symmetric_activations=False, float_layers=("embedding_head",)),
}


def check_recipe(recipe: Int8Recipe) -> None:
    if recipe.quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {', '.join(QUANT_FORMATS)}, got {recipe.quant_format!r}")
    if recipe.activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {recipe.activations!r}")
    if recipe.optimization not in SAVED_OPTIMIZATIONS:
        raise ValueError(f"optimization must be one of {SAVED_OPTIMIZATIONS}, got {recipe.optimization!r}")
    unknown = [layer for layer in recipe.float_layers if layer not in FLOAT_LAYERS]
    if unknown:
        raise ValueError(f"float_layers: unknown {unknown}; known: {', '.join(FLOAT_LAYERS)}")


def save_optimized(source: Path, target: Path, level: str) -> None:
    """onnxruntime's graph optimisation of ``source`` at ``level`` (basic | extended), saved to ``target``."""
    import onnxruntime

    levels = {
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(target)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def quantize_int8(
    source: Path, target: Path, calibration: Calibration | None, recipe: Int8Recipe = INT8_TARGETS["tensorrt"]
) -> list[str]:
    """Static INT8 copy of ``source`` written the ``recipe``'s way, calibrated (min/max) on ``calibration``
    batches. BatchNorms are folded into their convolutions first (onnxruntime's quantization pre-processing),
    so the INT8 convolution carries the BN; ``recipe.float_layers`` are left in float. Returns those nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        raise ValueError("INT8 quantization needs calibration images")
    check_recipe(recipe)
    quiet_onnxruntime()  # the calibrator's and the optimiser's sessions
    activation_type = QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="reid_quant_") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = float_node_names(prepared, recipe.float_layers)
        quantized = Path(scratch) / "quantized.onnx" if recipe.optimization else target
        quantize_static(
            str(prepared),
            str(quantized),
            calibration_reader(*calibration),
            quant_format=getattr(QuantFormat, recipe.quant_format),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True},
        )
        if recipe.optimization:
            save_optimized(quantized, target, recipe.optimization)
    return excluded


Converter = Callable[[Path, Path, Calibration | None], list[str]]
# export.data_type -> converter (fp32 source, target, calibration or None) -> nodes left in float.
DATA_TYPES: dict[str, Converter] = {"fp32": keep_fp32, "fp16": convert_fp16, "int8": quantize_int8}
CALIBRATED = ("int8",)  # the data types that need calibration images


def converter(data_type: str, int8_target: str = "tensorrt") -> Converter:
    """DATA_TYPES' converter for ``data_type``; int8 writes ``int8_target``'s recipe (a key of INT8_TARGETS)."""
    if data_type == "int8":
        return functools.partial(quantize_int8, recipe=INT8_TARGETS[int8_target])
    return DATA_TYPES[data_type]


# ----------------------------------------------------------------------------------------------- parity
def cosine_parity(reference, candidate, batches: Iterable[np.ndarray]) -> tuple[float, float]:
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

    quiet_onnxruntime()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run([output_name], {input_name: batch})[0]
