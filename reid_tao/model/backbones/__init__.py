"""The backbone table: one entry per ``model.backbone`` name.

Adding a backbone is one entry here plus its builder: build, validation and weight loading all read
this table. A builder takes :class:`BackboneOptions` and returns a module with ``out_channels`` whose
forward maps (N, 3, H, W) images to an (N, C, h, w) feature map.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from reid_tao.model.backbones.sizes import RESNET_WIDTHS, SWIN_OUTPUT_STRIDE, SWIN_WIDTHS

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class BackboneOptions:
    """Everything a builder may use; each family honours the options listed in its entry."""

    image_size: tuple[int, int] = (256, 128)
    last_stride: int = 1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attn_drop_rate: float = 0.0


@dataclass(frozen=True)
class ImageNetSource:
    """Where the official ImageNet weights come from: a torchvision weights enum or a timm model name."""

    library: str  # "torchvision" | "timm"
    name: str


@dataclass(frozen=True)
class BackboneEntry:
    family: str  # shown in messages, e.g. "ResNet"
    feature_width: int  # channels of the output feature map
    build: Callable[[BackboneOptions], "nn.Module"]
    imagenet: ImageNetSource
    options: frozenset[str]  # the BackboneOptions fields (besides image_size) this backbone honours
    input_multiple: int = 1  # input height and width must be multiples of this
    reduces_to_feat_dim: bool = True  # a linear reduction to feat_dim by default (else only on request)


# The builders import their modules (torch, torchvision, timm) when called: the table itself imports no torch, so a
# mistyped model.backbone is answered at once (a new builder keeps its heavy imports inside, like these).
def _resnet(depth: int, options: BackboneOptions) -> "nn.Module":
    from reid_tao.model.backbones.resnet import ResNetBackbone

    return ResNetBackbone(depth=depth, last_stride=options.last_stride)


def _swin(name: str, options: BackboneOptions) -> "nn.Module":
    from reid_tao.model.backbones.swin import SwinBackbone

    return SwinBackbone(
        name,
        img_size=options.image_size,
        drop_path_rate=options.drop_path_rate,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
    )


BACKBONES: dict[str, BackboneEntry] = {
    **{
        f"resnet_{depth}": BackboneEntry(
            family="ResNet",
            feature_width=width,
            build=partial(_resnet, depth),
            imagenet=ImageNetSource("torchvision", f"ResNet{depth}_Weights"),
            options=frozenset({"last_stride"}),
        )
        for depth, width in RESNET_WIDTHS.items()
    },
    **{
        name: BackboneEntry(
            family="Swin",
            feature_width=width,
            build=partial(_swin, name),
            imagenet=ImageNetSource("timm", name),
            options=frozenset({"drop_rate", "drop_path_rate", "attn_drop_rate"}),
            input_multiple=SWIN_OUTPUT_STRIDE,
            reduces_to_feat_dim=False,
        )
        for name, width in SWIN_WIDTHS.items()
    },
}
