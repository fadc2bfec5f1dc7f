"""ResNet backbones from torchvision, cut before pooling, with a configurable last stride."""

import torch
from torch import nn
from torchvision import models

from reid_tao.model.backbones.sizes import RESNET_WIDTHS

RESNET_DEPTHS = tuple(RESNET_WIDTHS)


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc: (N, 3, H, W) -> (N, C, H/16 or H/32, ...).

    Module names are torchvision's (conv1, bn1, layer1..layer4), so torchvision state dicts load as-is.
    resnet_18/34 use BasicBlock (512 channels), 50/101/152 Bottleneck (2048 channels).
    """

    def __init__(self, depth: int = 50, last_stride: int = 1):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
        net = getattr(models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        first_block = self.layer4[0]
        # The stride of the last stage sits in conv2 for Bottleneck and conv1 for BasicBlock.
        strided_conv = first_block.conv2 if isinstance(first_block, models.resnet.Bottleneck) else first_block.conv1
        strided_conv.stride = (last_stride, last_stride)
        first_block.downsample[0].stride = (last_stride, last_stride)
        self.out_channels = net.fc.in_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
