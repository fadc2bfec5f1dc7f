"""TAO ReIdentificationNet's ResNet model, rebuilt exactly so that checkpoints trained with TAO run here.

TAO's network differs from :class:`reid_tao.model.baseline.Baseline` in ways that change its embeddings:
- no ReLU after the stem BatchNorm (conv1 -> bn1 -> maxpool);
- Bottleneck blocks for every depth, so its "resnet_18" is ResNet-50's layout with [2, 2, 2, 2] blocks;
- when feat_dim != 2048 a 1x1 convolution with bias (``base.feature``) maps the 2048-channel map to feat_dim
  *before* global average pooling;
- without a neck the classifier has a bias.
Module names follow TAO (``base.*``, ``bottleneck.*``, ``classifier.*``), so TAO's state dict (``model.``
stripped) loads with strict checking. The blocks are torchvision's Bottleneck, which has TAO's layout
(stride in the 3x3 convolution, ``downsample.0/1``).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from reid_tao.model.baseline import NECK_FEATURES

# TAO's model.backbone -> Bottleneck blocks per stage (TAO builds every name with Bottleneck blocks).
TAO_RESNET_LAYERS = {
    "resnet_18": (2, 2, 2, 2),
    "resnet_34": (3, 4, 6, 3),
    "resnet_50": (3, 4, 6, 3),
    "resnet_101": (3, 4, 23, 3),
    "resnet_152": (3, 8, 36, 3),
}
TAO_RESNET_WIDTH = 2048  # channels after layer4 (Bottleneck expansion 4 x 512)
TAO_NECKS = ("bnneck", "")


def tao_resnet_layers(state: Mapping[str, Any]) -> tuple[int, ...]:
    """Bottleneck blocks per stage of TAO ResNet weights (``model.`` stripped), counted from the keys
    base.layer<stage>.<block>.*."""
    blocks = [set() for _ in range(4)]
    for key in state:
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "base" and parts[1] in ("layer1", "layer2", "layer3", "layer4"):
            blocks[int(parts[1][-1]) - 1].add(parts[2])
    return tuple(len(found) for found in blocks)


class TaoResNet(nn.Module):
    """TAO's ResNet trunk: (N, 3, H, W) -> (N, feat_dim, h, w)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), last_stride: int = 1, feat_dim: int = TAO_RESNET_WIDTH):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {layers}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be positive, got {feat_dim}")
        net = ResNet(Bottleneck, list(layers))
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool  # no stem ReLU, as in TAO
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.layer4[0].conv2.stride = (last_stride, last_stride)
        self.layer4[0].downsample[0].stride = (last_stride, last_stride)
        self.layers, self.last_stride = layers, last_stride
        if feat_dim != TAO_RESNET_WIDTH:
            self.feature = nn.Conv2d(TAO_RESNET_WIDTH, feat_dim, kernel_size=1)
        self.out_channels = feat_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.feature(x) if hasattr(self, "feature") else x


class TaoBaseline(nn.Module):
    """TAO's Baseline head on :class:`TaoResNet`: average pooling -> [BNNeck] -> classifier.

    Same interface as reid_tao's Baseline: training returns (logits, global feature), evaluation the
    test feature chosen by ``neck_feat`` ("after" the neck or "before" it); ``feat_dim`` is its width.
    """

    def __init__(self, base: TaoResNet, num_classes: int, neck: str = "bnneck", neck_feat: str = "after"):
        super().__init__()
        if neck not in TAO_NECKS or neck_feat not in NECK_FEATURES:
            raise ValueError(
                f"neck must be one of {TAO_NECKS} and neck_feat one of {NECK_FEATURES}, got {neck!r} and {neck_feat!r}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.base = base
        self.feat_dim = base.out_channels
        self.neck, self.neck_feat = neck, neck_feat
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(self.feat_dim)
            self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=not neck)  # TAO: bias only without a neck

    def forward(self, images: torch.Tensor):
        global_feat = self.base(images).mean(dim=(2, 3))
        feat = self.bottleneck(global_feat) if self.neck else global_feat
        if self.training:
            return self.classifier(feat), global_feat
        return feat if self.neck_feat == "after" else global_feat
