"""Test-time embeddings: the model's test feature, optionally averaged with the mirrored image's."""
from typing import Iterable, Tuple

import torch
from torch import nn


def embed(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Embeddings (N, D) in float32; with flip, the mean of image and mirror (TAO sums them)."""
    features = model(images).float()
    if flip:
        features = (features + model(torch.flip(images, dims=[3])).float()) / 2
    return features


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable, device: torch.device, flip: bool = False,
                     autocast_dtype: torch.dtype = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the model in eval mode over (images, pids, camids, ...) batches -> features, pids, camids (CPU ids)."""
    model.eval()
    features, pids, camids = [], [], []
    for batch in batches:
        images = batch[0].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features.append(embed(model, images, flip))
        pids.append(torch.as_tensor(batch[1]))
        camids.append(torch.as_tensor(batch[2]))
    return torch.cat(features), torch.cat(pids), torch.cat(camids)
