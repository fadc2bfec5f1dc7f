"""A test-only backbone, plugged into the backbone table with one entry like any other (docs/contributing.md).

Tests that need "some model" train this one instead of resnet_18: a checkpoint of a few hundred KB instead of
~135 MB (resnet_18 with Adam state), and steps that take milliseconds. It has what the pipeline relies on
(BatchNorm, a last stride, an ``out_channels``) and nothing else; it has no ImageNet weights, so specs that use it
set ``model.pretrain_choice=''`` (tiny_overrides does).

The suite registers it in tests/conftest.py; a test's subprocess registers it with ``python
tests/support/reid.py`` (``reid`` with the entry added) or by importing this module and calling :func:`register`.
"""

from torch import nn

from reid_tao.model.backbones import BACKBONES, BackboneEntry, BackboneOptions, ImageNetSource

NAME = "tiny_test"
WIDTH = 64  # channels of the feature map; tiny_overrides reduces them to model.feat_dim=32


def _block(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Sequential):
    """(N, 3, H, W) -> (N, 64, H/4, W/4) with model.last_stride=1 (H/8 with 2), like a ResNet's last stage."""

    def __init__(self, last_stride: int = 1):
        super().__init__(_block(3, 16, 2), _block(16, 32, 2), _block(32, WIDTH, last_stride))
        self.out_channels = WIDTH


def _build(options: BackboneOptions) -> TinyBackbone:
    return TinyBackbone(options.last_stride)


ENTRY = BackboneEntry(
    family="Tiny (tests only)",
    feature_width=WIDTH,
    build=_build,
    imagenet=ImageNetSource("none", NAME),
    options=frozenset({"last_stride"}),
)


def register(table: dict[str, BackboneEntry] = BACKBONES) -> None:
    """Add the entry (again: a no-op); the spec checks, the builders and checkpoint loading then accept it."""
    table[NAME] = ENTRY
