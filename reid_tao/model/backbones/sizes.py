"""The backbone families' sizes, without torch: the backbone table (:data:`reid_tao.model.backbones.BACKBONES`)
is built from them, so `reid` checks a mistyped model.backbone before the seconds of importing torch."""

# ResNet feature width per depth: BasicBlock nets end with 512 channels, Bottleneck nets with 2048.
RESNET_WIDTHS = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048}

SWIN_WIDTHS = {
    "swin_tiny_patch4_window7_224": 768,
    "swin_small_patch4_window7_224": 768,
    "swin_base_patch4_window7_224": 1024,
}
SWIN_PATCH_SIZE = 4
SWIN_NUM_STAGES = 4
SWIN_OUTPUT_STRIDE = SWIN_PATCH_SIZE * 2 ** (SWIN_NUM_STAGES - 1)  # 32
