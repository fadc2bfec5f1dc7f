"""Swin backbones: shapes at re-ID sizes, exact window tiling (no wrap-around leak), rates, training."""

import pytest
import timm
import torch
from torch import nn

from reid_tao.model.backbones.swin import SWIN_WIDTHS, SwinBackbone, fit_window_sizes
from reid_tao.model.baseline import Baseline

TINY = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def tiny_256x128() -> SwinBackbone:
    torch.manual_seed(0)
    return SwinBackbone(TINY, (256, 128), drop_path_rate=0.0)


def test_window_sizes_tile_every_stage_exactly():
    assert fit_window_sizes((224, 224)) == ((7, 7),) * 4  # the pretrained layout is kept where it fits
    assert fit_window_sizes((256, 128)) == ((8, 8), (8, 8), (8, 8), (8, 4))
    assert fit_window_sizes((384, 128)) == ((8, 8), (8, 8), (8, 8), (6, 4))
    for size in [(256, 128), (384, 128), (224, 224), (320, 160), (352, 128)]:
        for stage, window in enumerate(fit_window_sizes(size)):
            feature = (size[0] // 4 // 2**stage, size[1] // 4 // 2**stage)
            assert feature[0] % window[0] == 0 and feature[1] % window[1] == 0, (size, stage, window)


def test_built_blocks_use_the_fitted_windows(tiny_256x128):
    blocks = [stage.blocks[1] for stage in tiny_256x128.model.layers]  # the shifted block of each stage
    assert [b.window_size for b in blocks] == [(8, 8), (8, 8), (8, 8), (8, 4)]
    # a window as large as the feature map cannot shift (timm turns the shift off on that axis)
    assert [b.shift_size for b in blocks] == [(4, 4), (4, 4), (4, 0), (0, 0)]


def test_forward_backward_256x128(tiny_256x128):
    images = torch.randn(2, 3, 256, 128, requires_grad=True)
    features = tiny_256x128.train()(images)
    assert features.shape == (2, 768, 8, 4)
    assert tiny_256x128.out_channels == 768
    features.square().mean().backward()
    grad = tiny_256x128.model.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.isfinite(images.grad).all()
    tiny_256x128.zero_grad(set_to_none=True)


def test_shifted_windows_do_not_leak_across_the_image_border(tiny_256x128):
    """Perturbing the top row must not change the bottom rows (head and feet are far apart).

    timm's own padding path (window 7 on a 64x32 map) fails this: it pads after the cyclic shift.
    """
    block = tiny_256x128.model.layers[0].blocks[1].eval()
    tokens = torch.randn(1, 64, 32, 96)
    perturbed = tokens.clone()
    perturbed[:, 0] += torch.randn(32, 96)
    with torch.no_grad():
        changed_rows = (block(perturbed) - block(tokens)).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert changed_rows[:4].any()  # its own shifted window still sees it
    assert not changed_rows[8:].any()

    timm_default = timm.create_model(TINY, pretrained=False, num_classes=0, img_size=(256, 128)).eval()
    padded_block = timm_default.layers[0].blocks[1]
    assert padded_block.window_size == (7, 7)  # documents why fit_window_sizes exists
    with torch.no_grad():
        leaked_rows = (padded_block(perturbed) - padded_block(tokens)).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert leaked_rows[56:].any()


def test_384x128_with_regularisation_rates_reaching_timm_modules():
    backbone = SwinBackbone(TINY, (384, 128), drop_path_rate=0.2, drop_rate=0.15, attn_drop_rate=0.05)
    last_block = backbone.model.layers[-1].blocks[-1]
    assert last_block.drop_path2.drop_prob == pytest.approx(0.2)  # stochastic depth rises to the rate
    assert backbone.model.layers[0].blocks[0].drop_path1.__class__ is nn.Identity  # first block: rate 0
    assert last_block.attn.attn_drop.p == pytest.approx(0.05)
    assert last_block.attn.proj_drop.p == pytest.approx(0.15)
    assert last_block.mlp.drop1.p == pytest.approx(0.15)
    assert backbone.embed_drop.p == pytest.approx(0.15)

    features = backbone.train()(torch.randn(2, 3, 384, 128))
    assert features.shape == (2, 768, 12, 4)
    features.mean().backward()
    assert torch.isfinite(backbone.model.layers[0].blocks[0].attn.qkv.weight.grad).all()


@pytest.mark.parametrize("name", sorted(SWIN_WIDTHS))
def test_feature_width_of_each_variant(name):
    backbone = SwinBackbone(name, (64, 32)).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 32))
    assert backbone.out_channels == SWIN_WIDTHS[name] == features.shape[1]
    assert features.shape[2:] == (2, 1)
    assert all(key.startswith("model.") for key in backbone.state_dict())
    assert "model.layers.0.blocks.0.attn.relative_position_bias_table" in backbone.no_weight_decay_names()


def test_bad_name_or_size_is_a_value_error_naming_the_argument():
    # The constructor speaks in its own arguments; the spec check (model.backbone, input size) is the config's.
    with pytest.raises(ValueError, match="name='swin_huge_patch4'"):
        SwinBackbone("swin_huge_patch4", (256, 128))
    with pytest.raises(ValueError, match="img_size=250x128.*multiples of 32"):
        SwinBackbone(TINY, (250, 128))


def test_baseline_with_swin_learns_a_tiny_batch():
    torch.manual_seed(0)
    # 64x32 keeps the step cheap on CPU; the backbone is the same code path as at 256x128.
    model = Baseline(
        SwinBackbone(TINY, (64, 32), drop_path_rate=0.0), num_classes=4, feat_dim=256, reduce_feat_dim=True
    ).train()
    images = torch.randn(8, 3, 64, 32)
    labels = torch.arange(4).repeat_interleave(2)  # 4 identities x 2 images
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(4):
        logits, global_feat = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert global_feat.shape == (8, 256)
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (8, 256)
