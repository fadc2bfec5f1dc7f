"""Swin Transformer backbones from timm, sized for re-ID inputs (256x128 and other multiples of 32).

The timm model is kept as ``self.model``, so this module's state-dict keys are timm's keys with a
``model.`` prefix (``model.patch_embed.proj.weight``, ``model.layers.0.blocks.0.attn.qkv.weight``, ...).

Window sizes: timm pads a feature map that is not a multiple of the window, but it pads *after* the
cyclic shift while building the shift mask for the padded size, so at 256x128 with window 7 the
wrapped-around rows/columns share windows with the opposite image border without being masked (the top
row of a person attends to the feet). We therefore pick, per stage, the window (h, w) closest to the
pretrained window 7 that divides that stage's feature map exactly: no padding, correct masks. At 224x224
this is the original window 7 everywhere; at 256x128 it is 8x8 (8x4, i.e. global, in the last stage).
Pretrained relative-position tables are interpolated to the new windows when weights are loaded
(see ``reid_tao.model.weights``).
"""

import timm
import torch
from torch import nn

from reid_tao.model.backbones.sizes import SWIN_NUM_STAGES as NUM_STAGES
from reid_tao.model.backbones.sizes import SWIN_OUTPUT_STRIDE as OUTPUT_STRIDE
from reid_tao.model.backbones.sizes import SWIN_PATCH_SIZE as PATCH_SIZE
from reid_tao.model.backbones.sizes import SWIN_WIDTHS

PRETRAINED_WINDOW = 7


def _closest_divisor(length: int, preferred: int) -> int:
    """The divisor of ``length`` nearest to ``preferred`` (the larger one on a tie)."""
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - preferred), -d))


def fit_window_sizes(img_size: tuple[int, int], preferred: int = PRETRAINED_WINDOW) -> tuple[tuple[int, int], ...]:
    """Per-stage (h, w) attention windows that tile each stage's feature map exactly.

    Stage 0 works on the (H/4, W/4) patch grid, each later stage halves it. For every stage and axis the
    divisor of the feature length closest to ``preferred`` is used, so timm never pads.
    """
    grid = (img_size[0] // PATCH_SIZE, img_size[1] // PATCH_SIZE)
    windows = []
    for stage in range(NUM_STAGES):
        scale = 2**stage
        windows.append(tuple(_closest_divisor(length // scale, preferred) for length in grid))
    return tuple(windows)


def check_swin_input_size(img_size: tuple[int, int]) -> None:
    """Raise ValueError unless both sides are positive multiples of the Swin output stride (32)."""
    height, width = img_size
    if height <= 0 or width <= 0 or height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
        raise ValueError(
            f"img_size={height}x{width}: Swin needs both sides to be multiples of {OUTPUT_STRIDE} "
            "(e.g. 256x128, 384x128, 224x224)"
        )


class SwinBackbone(nn.Module):
    """timm Swin Transformer without its head: (N, 3, H, W) -> (N, C, H/32, W/32) after the final LayerNorm.

    ``drop_rate`` is the Microsoft Swin / TAO ``dropout_rate``: dropout after the patch embedding and on the
    attention-projection and MLP outputs (timm's ``proj_drop_rate``); ``attn_drop_rate`` drops attention
    weights; ``drop_path_rate`` is the stochastic-depth rate of the last block (linearly increasing).
    """

    def __init__(
        self,
        name: str,
        img_size: tuple[int, int] = (256, 128),
        drop_path_rate: float = 0.1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
    ):
        super().__init__()
        if name not in SWIN_WIDTHS:
            raise ValueError(f"name={name!r} is not a Swin backbone; use one of {sorted(SWIN_WIDTHS)}")
        img_size = (int(img_size[0]), int(img_size[1]))
        check_swin_input_size(img_size)
        self.name = name
        self.img_size = img_size
        self.window_sizes = fit_window_sizes(img_size)
        self.model = timm.create_model(
            name,
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            window_size=self.window_sizes,
            drop_path_rate=drop_path_rate,
            proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
        )
        # timm has no dropout after the patch embedding (Microsoft's pos_drop); nn.Dropout adds no state-dict keys.
        self.embed_drop = nn.Dropout(drop_rate)
        self.out_channels = self.model.num_features
        if self.out_channels != SWIN_WIDTHS[name]:
            raise RuntimeError(f"timm built {name} with {self.out_channels} channels, expected {SWIN_WIDTHS[name]}")

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names (relative to this module) that Swin trains without weight decay."""
        return {f"model.{name}" for name in self.model.no_weight_decay()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_drop(self.model.patch_embed(images))  # (N, H/4, W/4, C), timm works channels-last
        tokens = self.model.norm(self.model.layers(tokens))
        return tokens.permute(0, 3, 1, 2)
