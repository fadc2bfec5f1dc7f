"""Exported ONNX models through onnxruntime, behind the same "features for a dataset" interface as the
PyTorch extractor.

The preprocessing comes from the JSON sidecar that `reid export` writes beside the model (the
:class:`~reid_tao.data.preprocessing.Preprocessing` fields plus the graph's input/output names), never
from a spec: the ONNX file must be usable on its own.
"""
import json
import logging
from pathlib import Path
from typing import Iterator, List, Sequence, Union

import numpy as np
import torch

from ..data.datamodule import eval_loader
from ..data.datasets import ImageDataset
from ..data.preprocessing import Preprocessing
from ..errors import DataError
from ..evaluation.features import embed
from ..io import first_line
from .devices import ACCELERATORS

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
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


def execution_providers(accelerator: str, available: Sequence[str], device_id: int = 0) -> List:
    """onnxruntime providers for ``accelerator`` (auto | gpu | cpu): CUDA when asked for or, with auto, when
    this onnxruntime build has it; always CPU as the fallback for operators CUDA lacks."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator == "gpu" and CUDA not in available:
        raise ValueError("accelerator 'gpu' needs onnxruntime's CUDAExecutionProvider (pip install onnxruntime-gpu); "
                         f"this onnxruntime has {', '.join(available)}")
    if accelerator != "cpu" and CUDA in available:
        return [(CUDA, {"device_id": int(device_id)}), CPU]
    return [CPU]


class OnnxModel:
    """A callable like the PyTorch model: normalised (N, 3, H, W) float tensor -> (N, D) float32 tensor (CPU)."""

    def __init__(self, path: Union[str, Path], field: str, accelerator: str = "auto", device_id: int = 0):
        import onnxruntime

        quiet_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{field}: ONNX file {path} does not exist")
        sidecar = onnx_sidecar_path(path)
        try:
            meta = json.loads(sidecar.read_text())
            self.preprocessing = Preprocessing.from_dict(meta)
            self.input_name, self.output_name = meta["input_name"], meta["output_name"]
            self.feat_dim = int(meta["feature_dim"])
            self.data_type = str(meta.get("data_type", "fp32"))  # fp32 | fp16 | int8 (older exports: fp32)
        except FileNotFoundError:
            raise DataError(f"{field}: {sidecar} (the preprocessing `reid export` writes beside {path.name}) is "
                            "missing; keep it next to the ONNX file or export again") from None
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{field}: {sidecar} is not a reid_tao export sidecar ({first_line(error, limit=200)})") \
                from None
        try:
            providers = execution_providers(accelerator, onnxruntime.get_available_providers(), device_id)
        except ValueError as error:
            raise DataError(f"{field}: {error}") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
            raise DataError(f"{field}: cannot load ONNX file {path} ({first_line(error, limit=200)})") from None
        self._check_graph(path, sidecar, field)
        self.providers = self.session.get_providers()
        log.info("%s: onnxruntime with %s", field, ", ".join(self.providers))

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
                isinstance(dim, int) and dim != want for dim, want in zip(inputs[self.input_name][1:], expected)):
            problem = f"input size {expected} (the graph's input is {inputs[self.input_name]})"
        if problem:
            raise DataError(f"{field}: {sidecar} does not describe {path.name}: it names {problem}; keep the "
                            "sidecar that `reid export` wrote with this model, or export again")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        (features,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(features)


def onnx_feature_batches(model: OnnxModel, dataset: ImageDataset, batch_size: int, num_workers: int,
                         flip: bool = False) -> Iterator[torch.Tensor]:
    """(batch, D) float32 features in dataset order, one loader batch at a time (streamed, never all held)."""
    with torch.no_grad():
        for batch in eval_loader(dataset, batch_size, num_workers):
            yield embed(model, batch.images, flip)
