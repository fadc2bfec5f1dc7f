"""Global pooling of a (N, C, h, w) feature map into (N, C)."""

import torch
from torch import nn
from torch.nn import functional as F


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenovic et al.): (mean x^p)^(1/p) with a learnable p; p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1)
        return pooled.pow(1.0 / self.p).flatten(1)


class AveragePooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
