"""Test-time embeddings: the model's test feature, optionally averaged with the mirrored image's."""

import torch
from torch import nn


def embed(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Embeddings (N, D) in float32; with flip, the mean of image and mirror (TAO sums them)."""
    features = model(images).float()
    if flip:
        features = (features + model(torch.flip(images, dims=[3])).float()) / 2
    return features
