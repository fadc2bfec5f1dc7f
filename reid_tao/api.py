"""The Python API: embeddings from a trained checkpoint (.pth) or an exported model (.onnx) in a few lines.

from reid_tao import Embedder
embedder = Embedder.from_checkpoint("model.onnx")    # or results/.../reid_model_latest.pth
features = embedder.embed(["a.jpg", "b.jpg"])         # (2, D) float32 numpy
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reid_tao.builders import load_trained_model
from reid_tao.data.datasets import as_rgb, load_rgb
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.deploy.runtime import OnnxModel, is_onnx_file
from reid_tao.evaluation.features import embed

ImageInput = str | Path | Image.Image | np.ndarray


def _as_pil(item: ImageInput, position: int) -> Image.Image:
    if isinstance(item, (str, Path)):
        return load_rgb(str(item))
    if isinstance(item, Image.Image):
        return as_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(
                f"inputs[{position}]: arrays must be uint8 H x W x 3 (RGB), got {item.dtype} "
                f"{item.shape}; pass a float (N, 3, H, W) tensor for preprocessed images"
            )
        return Image.fromarray(item)
    raise ValueError(
        f"inputs[{position}]: expected an image path, PIL image or uint8 H x W x 3 array, got {type(item).__name__}"
    )


class Embedder:
    """One embedding per image, in batches, on the GPU when there is one (CUDA provider for ONNX)."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.preprocessing = model, preprocessing
        self.device, self.batch_size = torch.device(device), int(batch_size)
        self._transform = preprocessing.eval_transform()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, batch_size: int = 64) -> "Embedder":
        """A reid_tao .pth checkpoint (config and preprocessing from inside it) or an exported .onnx file
        (preprocessing from the JSON beside it). ``device``: "cuda", "cpu", ...; default: cuda when available."""
        if is_onnx_file(path):
            # Default: CUDA when this onnxruntime build has it (a CPU-only onnxruntime on a GPU machine is fine).
            accelerator = "auto" if device is None else "gpu" if str(device).startswith("cuda") else "cpu"
            model = OnnxModel(
                path,
                "checkpoint",
                accelerator=accelerator,
                device_id=(torch.device(device).index or 0) if device else 0,
            )
            return cls(model, model.preprocessing, "cpu", batch_size)  # onnxruntime takes host arrays
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        trained = load_trained_model(str(path), "checkpoint")
        return cls(trained.model.to(device).eval(), trained.preprocessing, device, batch_size)

    @property
    def feat_dim(self) -> int:
        return int(self.model.feat_dim)

    def embed(self, inputs: ImageInput | Iterable[ImageInput] | torch.Tensor, normalize: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings of image paths, PIL images, uint8 H x W x 3 arrays (one or a list), or a
        float (N, 3, H, W) tensor already preprocessed. ``normalize``: unit-length rows (cosine = dot product)."""
        if isinstance(inputs, torch.Tensor):
            batches = self._tensor_batches(inputs)
        else:
            items = [inputs] if isinstance(inputs, (str, Path, Image.Image, np.ndarray)) else list(inputs)
            batches = self._image_batches(items)
        rows = [self._run(batch) for batch in batches]
        features = np.concatenate(rows) if rows else np.empty((0, self.feat_dim), dtype=np.float32)
        if normalize:
            features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return features

    def _tensor_batches(self, images: torch.Tensor) -> list[torch.Tensor]:
        expected = (3, *self.preprocessing.input_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            raise ValueError(
                f"inputs: a tensor must be float (N, {', '.join(map(str, expected))}) and preprocessed, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        return list(images.split(self.batch_size))

    def _image_batches(self, items: list) -> Iterable[torch.Tensor]:
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            yield torch.stack([self._transform(_as_pil(item, start + i)) for i, item in enumerate(chunk)])

    def _run(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return embed(self.model, images.float().to(self.device)).cpu().numpy().astype(np.float32, copy=False)
