"""The BNNeck model: every ResNet depth, block types, strides, neck settings, pooling."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from reid_tao.builders import build_model, load_experiment
from reid_tao.model.backbones.resnet import ResNetBackbone
from reid_tao.model.baseline import Baseline
from reid_tao.model.pooling import GeneralizedMeanPooling


@pytest.mark.parametrize(
    "depth, block, width",
    [
        (18, BasicBlock, 512),
        (34, BasicBlock, 512),
        (50, Bottleneck, 2048),
        (101, Bottleneck, 2048),
        (152, Bottleneck, 2048),
    ],
)
def test_resnet_depths_use_the_right_block(depth, block, width):
    backbone = ResNetBackbone(depth, last_stride=1)
    assert isinstance(backbone.layer1[0], block)  # TAO builds Bottleneck for 18/34 (bug B3)
    assert backbone.out_channels == width
    if depth in (18, 50):
        out = backbone(torch.randn(1, 3, 64, 32))
        assert out.shape == (1, width, 4, 2)  # stride 16 with last_stride 1


def test_last_stride_two_halves_the_map():
    assert ResNetBackbone(18, last_stride=2)(torch.randn(1, 3, 64, 32)).shape == (1, 512, 2, 1)


@pytest.mark.parametrize("neck, neck_feat", [("bnneck", "after"), ("bnneck", "before"), ("", "after")])
@pytest.mark.parametrize("feat_dim", [64, 512])
def test_baseline_outputs(neck, neck_feat, feat_dim):
    model = Baseline(ResNetBackbone(18), num_classes=7, feat_dim=feat_dim, neck=neck, neck_feat=neck_feat)
    images = torch.randn(4, 3, 64, 32)
    logits, feature = model.train()(images)
    assert logits.shape == (4, 7) and feature.shape == (4, feat_dim)
    assert model.classifier.bias is None
    if feat_dim == 512:
        assert isinstance(model.reduction, torch.nn.Identity)
    model.eval()
    test_feature = model(images)
    assert test_feature.shape == (4, feat_dim)
    pre_bn = model.reduction(model.pool(model.backbone(images)))
    if neck == "bnneck" and neck_feat == "after":
        assert torch.allclose(test_feature, model.bottleneck(pre_bn))
        assert not torch.allclose(test_feature, pre_bn)
    else:
        assert torch.allclose(test_feature, pre_bn)


def test_bnneck_bias_is_frozen():
    model = Baseline(ResNetBackbone(18), num_classes=3, feat_dim=32)
    assert not model.bottleneck.bias.requires_grad
    assert model.bottleneck.weight.requires_grad


def test_gem_pooling():
    pool = GeneralizedMeanPooling(p=1.0)
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(pool(x), x.mean(dim=(2, 3)), atol=1e-5)
    pool_max_like = GeneralizedMeanPooling(p=30.0)
    assert torch.allclose(pool_max_like(x), x.amax(dim=(2, 3)), atol=0.1)
    model = build_model(
        load_experiment(None, ["model.backbone=resnet_18", "model.gem_pooling=true", "model.pretrain_choice=''"]),
        num_classes=3,
    )
    assert isinstance(model.pool, GeneralizedMeanPooling)
    assert any(p is model.pool.p for p in model.parameters())  # p is learned


def test_build_model_maps_spec_fields():
    config = load_experiment(
        None,
        [
            "model.backbone=resnet_34",
            "model.last_stride=2",
            "model.feat_dim=128",
            "model.neck=''",
            "model.neck_feat=before",
            "model.pretrain_choice=''",
        ],
    )
    model = build_model(config, num_classes=11)
    assert isinstance(model.backbone.layer1[0], BasicBlock)
    assert model.backbone.layer4[0].conv1.stride == (2, 2)
    assert model.feat_dim == 128 and model.classifier.out_features == 11
    assert isinstance(model.bottleneck, torch.nn.Identity) and model.neck_feat == "before"


def test_train_compile_wraps_forward_but_keeps_checkpoint_keys():
    from reid_tao.builders import build_module

    config = load_experiment(None, ["model.backbone=resnet_18", "model.pretrain_choice=''", "train.compile=true"])
    module = build_module(config, num_classes=3)
    keys_before = set(module.state_dict())
    assert module._train_forward is module.model
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.configure_model()
    assert isinstance(module._train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert set(module.state_dict()) == keys_before


def test_flip_feature_is_the_mean_of_image_and_mirror():
    from reid_tao.evaluation.features import embed

    model = Baseline(ResNetBackbone(18), num_classes=3, feat_dim=16).eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(3))) / 2
        assert torch.allclose(embed(model, images, flip=True), expected, atol=1e-6)
        assert not torch.allclose(embed(model, images, flip=False), expected, atol=1e-4)


def test_without_id_loss_the_classifier_is_not_run_and_the_id_head_is_frozen():
    model = Baseline(ResNetBackbone(18), num_classes=3, feat_dim=16)
    model.freeze_id_head()
    assert not any(p.requires_grad for p in model.classifier.parameters())
    assert not any(p.requires_grad for p in model.bottleneck.parameters())
    model.train()
    logits, features = model(torch.randn(4, 3, 32, 16))
    assert logits is None and features.shape == (4, 16)
    assert model.bottleneck.num_batches_tracked.item() == 1  # the neck still tracks its statistics
    features.sum().backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(name).grad is not None for name in trainable)  # DDP needs every one
