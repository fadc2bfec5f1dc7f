"""Exported ONNX models through onnxruntime, behind the same "features for a dataset" interface as the
PyTorch extractor.

The preprocessing comes from the JSON sidecar that `reid export` writes beside the model (the
:class:`~reid_tao.data.preprocessing.Preprocessing` fields plus the graph's input/output names), never
from a spec: the ONNX file must be usable on its own.

A sidecar and a graph are inputs like a checkpoint: the sidecar is read only when it is a regular file of at
most 1 MiB, its input size and feature width are bounded as a checkpoint's are, and a graph whose inferred
shapes need a tensor over :data:`MAX_TENSOR_BYTES` for one image is refused before onnxruntime runs it; a
failure while running (an allocation that shapes did not show) is one line.
"""

import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from reid_tao.config.schema import MAX_FEAT_DIM, MAX_INPUT_SIDE
from reid_tao.data.datamodule import eval_loader
from reid_tao.data.datasets import ImageDataset
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.errors import DataError, first_line
from reid_tao.evaluation.features import embed
from reid_tao.io.regular_files import read_regular_file

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# The accelerators onnxruntime is asked for: the spec's (engine.devices.ACCELERATORS; a test keeps them equal).
ACCELERATORS = ("auto", "gpu", "cpu")
SIDECAR_MAX_BYTES = 2**20
# One image's largest tensor: a 4096x4096 input's 64-channel stem output is 1 GiB in float32.
MAX_TENSOR_BYTES = 4 * 2**30
_ALLOCATION = re.compile(r"Failed to allocate memory for requested buffer of size (\d+)")
ORT_ERRORS_ONLY = 3  # onnxruntime's log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def quiet_onnxruntime() -> None:
    """Errors only from onnxruntime's own logger. Its warnings (unused initializers removed, graph rewrites) say
    nothing a user acts on, and they reach stderr with colour escape codes even when it is piped or a log file."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(ORT_ERRORS_ONLY)


def is_onnx_file(path) -> bool:
    return bool(path) and Path(str(path)).suffix.lower() == ".onnx"


def onnx_sidecar_path(onnx_path) -> Path:
    """Where export writes (and inference reads) the preprocessing of ``model.onnx``: ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def execution_providers(accelerator: str, available: Sequence[str], device_id: int = 0) -> list:
    """onnxruntime providers for ``accelerator`` (auto | gpu | cpu): CUDA when asked for or, with auto, when
    this onnxruntime build has it; always CPU as the fallback for operators CUDA lacks."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator == "gpu" and CUDA not in available:
        raise ValueError(
            "accelerator 'gpu' needs onnxruntime's CUDAExecutionProvider (pip install onnxruntime-gpu); "
            f"this onnxruntime has {', '.join(available)}"
        )
    if accelerator != "cpu" and CUDA in available:
        return [(CUDA, {"device_id": int(device_id)}), CPU]
    return [CPU]


class OnnxModel:
    """A callable like the PyTorch model: normalised (N, 3, H, W) float tensor -> (N, D) float32 tensor (CPU)."""

    def __init__(self, path: str | Path, field: str, accelerator: str = "auto", device_id: int = 0):
        import onnxruntime

        quiet_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{field}: ONNX file {path} does not exist")
        sidecar = onnx_sidecar_path(path)
        self.path, self.field = path, field
        self._read_sidecar(sidecar, field)
        try:
            providers = execution_providers(accelerator, onnxruntime.get_available_providers(), device_id)
        except ValueError as error:
            raise DataError(f"{field}: {error}") from None
        largest = largest_tensor(path)
        if largest is not None and largest[1] > MAX_TENSOR_BYTES:
            raise DataError(
                f"{field}: {path} is refused: its tensor {largest[0]!r} needs {largest[1] / 2**30:.1f} GiB "
                f"for one image (at most {MAX_TENSOR_BYTES // 2**30} GiB); export the model again"
            )
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
            raise DataError(f"{field}: cannot load ONNX file {path} ({first_line(error, limit=200)})") from None
        self._check_graph(path, sidecar, field)
        self.providers = self.session.get_providers()
        self._run_options = onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4  # a failed run is our one line, not onnxruntime's log line too
        log.info("%s: onnxruntime with %s", field, ", ".join(self.providers))

    def _read_sidecar(self, sidecar: Path, field: str) -> None:
        try:  # a regular file only: a FIFO there would block the read forever
            meta = json.loads(read_regular_file(sidecar, SIDECAR_MAX_BYTES))
            self.preprocessing = Preprocessing.from_dict(meta)
            self.input_name, self.output_name = meta["input_name"], meta["output_name"]
            self.feat_dim = int(meta["feature_dim"])
            self.data_type = str(meta.get("data_type", "fp32"))  # fp32 | fp16 | int8 (older exports: fp32)
        except FileNotFoundError:
            raise DataError(
                f"{field}: {sidecar} (the preprocessing `reid export` writes beside {self.path.name}) is "
                "missing; keep it next to the ONNX file or export again"
            ) from None
        except OSError as error:
            raise DataError(
                f"{field}: {sidecar} cannot be read ({error.strerror}); keep the sidecar that "
                "`reid export` wrote, or export again"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(
                f"{field}: {sidecar} is not a reid_tao export sidecar ({first_line(error, limit=200)})"
            ) from None
        if max(self.preprocessing.input_size) > MAX_INPUT_SIDE or not 1 <= self.feat_dim <= MAX_FEAT_DIM:
            raise DataError(
                f"{field}: {sidecar}: input size {list(self.preprocessing.input_size)} or feature_dim "
                f"{self.feat_dim} out of bounds (at most {MAX_INPUT_SIDE} pixels a side, feature_dim "
                f"1..{MAX_FEAT_DIM}); keep the sidecar that `reid export` wrote, or export again"
            )

    def _check_graph(self, path: Path, sidecar: Path, field: str) -> None:
        """The sidecar must describe the graph: tensor names and (3, H, W) input, else one line here rather than
        an onnxruntime traceback at the first batch."""
        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        outputs = [node.name for node in self.session.get_outputs()]
        expected = [3, *self.preprocessing.input_size]
        problem = None
        if self.input_name not in inputs:
            problem = f"input {self.input_name!r} (the graph has {', '.join(inputs)})"
        elif self.output_name not in outputs:
            problem = f"output {self.output_name!r} (the graph has {', '.join(outputs)})"
        elif len(inputs[self.input_name]) != 4 or any(
            isinstance(dim, int) and dim != want for dim, want in zip(inputs[self.input_name][1:], expected)
        ):
            problem = f"input size {expected} (the graph's input is {inputs[self.input_name]})"
        if problem:
            raise DataError(
                f"{field}: {sidecar} does not describe {path.name}: it names {problem}; keep the "
                "sidecar that `reid export` wrote with this model, or export again"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        try:
            (features,) = self.session.run([self.output_name], {self.input_name: array}, self._run_options)
        except Exception as error:  # onnxruntime's own exception types (Fail, RuntimeException, ...)
            allocation = _ALLOCATION.search(str(error))
            reason = (
                f"it asked for {int(allocation.group(1)) / 2**30:.1f} GiB at once, more than this machine can allocate"
                if allocation
                else first_line(error, limit=200)
            )
            raise DataError(
                f"{self.field}: onnxruntime failed running {self.path} on a batch of {len(array)} "
                f"({reason}); export the model again, or lower the batch size"
            ) from None
        return torch.from_numpy(features)


def _element_bytes(elem_type: int) -> int:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 4


def largest_tensor(path: Path) -> tuple | None:
    """(name, bytes) of the largest tensor onnx's shape inference (with constant propagation) finds in the graph
    at ``path`` for one image (a symbolic dimension, such as the batch, counts 1); None when the graph cannot be
    analysed (onnxruntime then decides, and a failed run is one line)."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False), data_prop=True)
    except Exception:  # not a graph onnx can read or infer: onnxruntime's load gives the line
        return None
    graph, largest = model.graph, None
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        count = math.prod(max(dim.dim_value, 1) for dim in tensor.shape.dim)
        size = count * _element_bytes(tensor.elem_type)
        if largest is None or size > largest[1]:
            largest = (value.name, size)
    return largest


def onnx_feature_batches(
    model: OnnxModel, dataset: ImageDataset, batch_size: int, num_workers: int, flip: bool = False
) -> Iterator[torch.Tensor]:
    """(batch, D) float32 features in dataset order, one loader batch at a time (streamed, never all held)."""
    with torch.no_grad():
        for batch in eval_loader(dataset, batch_size, num_workers):
            yield embed(model, batch.images, flip)
