"""Pretrained weights: file formats, key layouts, Swin window interpolation, clear failures, offline ImageNet."""

import argparse
import re
import socket

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from reid_tao.errors import DataError
from reid_tao.model import weights
from reid_tao.model.backbones.resnet import ResNetBackbone
from reid_tao.model.backbones.swin import SwinBackbone, fit_window_sizes
from reid_tao.model.baseline import Baseline
from reid_tao.model.weights import LoadReport, load_backbone_weights, load_imagenet_weights, read_state_dict

TINY = "swin_tiny_patch4_window7_224"
SIZE = (256, 128)


@pytest.fixture(scope="module")
def swin_target() -> SwinBackbone:
    torch.manual_seed(1)
    return SwinBackbone(TINY, SIZE, drop_path_rate=0.0).eval()


@pytest.fixture(scope="module")
def timm_source() -> torch.nn.Module:
    """A random timm Swin with the same windows as the backbone (and a 1000-class head to be ignored)."""
    torch.manual_seed(2)
    return timm.create_model(TINY, pretrained=False, img_size=SIZE, window_size=fit_window_sizes(SIZE)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(1, 3, *SIZE)


def scramble(module: torch.nn.Module) -> None:
    """Move every weight away from the source, so a load that silently did nothing fails the test."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.5)


def assert_same_features(backbone, timm_model, images):
    with torch.no_grad():
        expected = timm_model.forward_features(images).permute(0, 3, 1, 2)
        assert torch.equal(backbone(images), expected)


def assert_complete(report: LoadReport):
    assert report.matched == report.total > 0
    assert report.fraction == 1.0
    assert not report.missing and not report.unexpected and not report.shape_mismatch


@pytest.mark.parametrize("layout", ["plain_pth", "safetensors", "model_wrapped", "dataparallel", "baseline_ckpt"])
def test_timm_format_files_load_completely(layout, tmp_path, swin_target, timm_source, images):
    state = timm_source.state_dict()
    path = tmp_path / "weights.pth"
    if layout == "plain_pth":
        torch.save(state, path)
    elif layout == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "model_wrapped":
        path = tmp_path / "weights.pth.tar"
        torch.save({"model": state, "epoch": 3}, path)
    elif layout == "dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:  # a re-ID model of ours: keys under backbone.model., plus neck/classifier tensors outside it
        source_backbone = SwinBackbone(TINY, SIZE)
        source_backbone.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
        torch.save(Baseline(source_backbone, num_classes=5, feat_dim=768).state_dict(), path)

    scramble(swin_target)
    report = load_backbone_weights(swin_target, read_state_dict(path))
    assert_complete(report)
    assert report.ignored >= 2  # the head (timm) or the classifier/BNNeck (re-ID model)
    assert_same_features(swin_target, timm_source, images)


def test_lightning_checkpoint_with_python_objects(tmp_path):
    """An argparse Namespace (older Lightning hparams) is on the safe-load allow-list; the prefix is found."""
    source = torchvision.models.resnet18()
    state = {f"model.backbone.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    backbone = ResNetBackbone(18, last_stride=2)
    report = load_backbone_weights(backbone, read_state_dict(path))
    assert_complete(report)
    assert report.source_prefix == "model.backbone."
    assert torch.equal(backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_torchvision_resnet_file(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet50().eval()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    backbone = ResNetBackbone(50, last_stride=2).eval()  # stride 2 = torchvision's own layout
    report = load_backbone_weights(backbone, read_state_dict(path))
    assert_complete(report)
    assert report.total == 265  # BatchNorm step counters are not counted
    assert report.ignored == 2  # fc.weight, fc.bias
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        x = source.maxpool(source.relu(source.bn1(source.conv1(images))))
        expected = source.layer4(source.layer3(source.layer2(source.layer1(x))))
        assert torch.equal(backbone(images), expected)


def to_microsoft_layout(model: torch.nn.Module) -> dict:
    """timm Swin -> the official release layout: downsampling at the end of the previous stage, head.*,
    plus the index/mask buffers those files carry."""
    converted = {}
    for name, value in model.state_dict().items():
        name = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", name)
        converted[name.replace("head.fc.", "head.")] = value
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            converted[f"{name}.relative_position_index"] = module.relative_position_index
            converted[f"{name.rsplit('.', 1)[0]}.attn_mask"] = torch.zeros(4, 49, 49)
    return converted


def test_official_microsoft_file_interpolates_windows(tmp_path, swin_target):
    torch.manual_seed(4)
    source = timm.create_model(TINY, pretrained=False)  # 224x224, window 7: 13x13 relative-position tables
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if name.endswith("relative_position_bias_table"):
                # a constant per head survives any sensible interpolation unchanged
                parameter.copy_(torch.arange(parameter.shape[1], dtype=torch.float32).expand_as(parameter))
    official = to_microsoft_layout(source)
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": official}, path)

    scramble(swin_target)
    report = load_backbone_weights(swin_target, read_state_dict(path))
    assert report.fraction >= 0.9
    assert_complete(report)
    target = swin_target.model
    assert torch.equal(target.layers[1].downsample.reduction.weight, source.layers[1].downsample.reduction.weight)
    stage0_table = target.layers[0].blocks[1].attn.relative_position_bias_table
    assert stage0_table.shape == (15 * 15, 3)  # window 8
    last_table = target.layers[3].blocks[0].attn.relative_position_bias_table
    assert last_table.shape == (15 * 7, 24)  # window 8x4
    for table in (stage0_table, last_table):
        heads = torch.arange(table.shape[1], dtype=torch.float32).expand_as(table)
        torch.testing.assert_close(table, heads, atol=1e-4, rtol=0)


def test_standard_timm_checkpoint_at_224_loads_into_256x128(swin_target):
    """What timm/Hugging Face distribute (window 7 at 224) fits our windows after interpolation."""
    source = timm.create_model(TINY, pretrained=False, num_classes=0)
    scramble(swin_target)
    report = load_backbone_weights(swin_target, source.state_dict())
    assert_complete(report)
    assert torch.equal(swin_target.model.layers[2].blocks[3].mlp.fc1.weight, source.layers[2].blocks[3].mlp.fc1.weight)


def test_partial_file_loads_and_lists_what_is_missing(swin_target, timm_source):
    state = dict(timm_source.state_dict())
    dropped = ["layers.3.blocks.1.mlp.fc2.weight", "norm.bias"]
    for name in dropped:
        del state[name]
    state["layers.3.blocks.1.mlp.extra"] = torch.zeros(3)
    report = load_backbone_weights(swin_target, state)
    assert report.matched == report.total - 2
    assert report.missing == [f"model.{name}" for name in dropped]
    assert report.unexpected == ["model.layers.3.blocks.1.mlp.extra"]
    assert report.summary().startswith(f"loaded {report.total - 2}/{report.total} backbone tensors (")
    assert "2 missing, 1 unexpected, 0 shape mismatches" in report.summary()


def test_unrelated_file_fails_clearly_and_leaves_the_backbone_alone(tmp_path, swin_target):
    path = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.randn(4, 4), "decoder.bias": torch.randn(4)}, path)
    before = swin_target.model.norm.weight.clone()
    with pytest.raises(DataError) as caught:
        load_backbone_weights(swin_target, read_state_dict(path))
    message = str(caught.value)
    assert "model.pretrained_model_path" in message
    assert "only 0/171 backbone tensors (0.0%, need 90%)" in message
    assert "missing model.patch_embed.proj.weight" in message
    assert "encoder.weight" in message
    assert torch.equal(swin_target.model.norm.weight, before)


def test_wrong_resnet_depth_reports_shape_mismatches():
    with pytest.raises(DataError, match=r"shape mismatches layer1\.0\.conv1\.weight: file \(64, 64, 3, 3\)"):
        load_backbone_weights(ResNetBackbone(50), torchvision.models.resnet18().state_dict())


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(DataError, match=f"model.pretrained_model_path: file not found: {re.escape(str(missing))}"):
        read_state_dict(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="cannot read .*garbage.pth as a PyTorch or safetensors weights file"):
        read_state_dict(garbage)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(DataError, match="holds no tensors"):
        read_state_dict(empty)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No DNS (what this machine's real offline failure is) and empty weight caches."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(weights, "_hf_cached_file", lambda repo_id: None)


@pytest.mark.parametrize(
    "name, url",
    [
        ("resnet_50", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
        (TINY, "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth"),
    ],
)
def test_imagenet_download_failure_is_one_clear_error(offline, name, url):
    untouched = torch.nn.Linear(2, 2)  # the download fails before the backbone is looked at
    with pytest.raises(DataError) as caught:
        load_imagenet_weights(untouched, name)
    message = str(caught.value)
    assert message.startswith(f"could not download ImageNet weights for model.backbone={name} (URLError: ")
    assert "Name or service not known" in message
    assert url in message
    assert "set model.pretrained_model_path=/path/to/file (torchvision/timm/official format)" in message
    assert "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback
