"""Checkpoints written by TAO ReIdentificationNet: rebuilt as TAO's own network, checked against TAO's forward.

The state dicts here are made from TAO's layout (model.base.* ResNet with Bottleneck blocks, optional
base.feature 1x1 conv, model.bottleneck, model.classifier) with random weights, and ``tao_forward`` is an
independent re-implementation of TAO's eval forward in plain torch ops, written from TAO's resnet.py and
baseline.py: stem conv -> BN (no ReLU) -> maxpool, Bottleneck stages, [feature conv], average pool, BNNeck.
"""

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from reid_tao.builders import load_experiment, load_trained_model
from reid_tao.cli import main
from reid_tao.errors import DataError

from helpers import tiny_overrides

TINY_LAYERS = (1, 1, 1, 1)


def tao_state_dict(layers=TINY_LAYERS, feat_dim=256, num_classes=7, neck=True, seed=0) -> dict:
    """TAO's Lightning state dict (keys as TAO's ReIdentificationModel saves them), random but well scaled."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, out_ch, in_ch, k, bias=False):
        fan_in = in_ch * k * k
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, k, k, generator=generator) * (1.0 / fan_in) ** 0.5
        if bias:
            state[f"{name}.bias"] = torch.randn(out_ch, generator=generator) * 0.1

    def bn(name, ch):
        state[f"{name}.weight"] = 0.5 + torch.rand(ch, generator=generator)
        state[f"{name}.bias"] = torch.randn(ch, generator=generator) * 0.1
        state[f"{name}.running_mean"] = torch.randn(ch, generator=generator) * 0.1
        state[f"{name}.running_var"] = 0.5 + torch.rand(ch, generator=generator)
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("model.base.conv1", 64, 3, 7)
    bn("model.base.bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for block in range(blocks):
            prefix = f"model.base.layer{stage}.{block}"
            conv(f"{prefix}.conv1", planes, inplanes, 1)
            bn(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2", planes, planes, 3)
            bn(f"{prefix}.bn2", planes)
            conv(f"{prefix}.conv3", planes * 4, planes, 1)
            bn(f"{prefix}.bn3", planes * 4)
            if block == 0:  # TAO: stride != 1 or inplanes != planes * 4, true for every first block
                conv(f"{prefix}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{prefix}.downsample.1", planes * 4)
            inplanes = planes * 4
    if feat_dim != 2048:
        conv("model.base.feature", feat_dim, 2048, 1, bias=True)
    if neck:
        bn("model.bottleneck", feat_dim)
        state["model.classifier.weight"] = torch.randn(num_classes, feat_dim, generator=generator) * 0.01
    else:
        state["model.classifier.weight"] = torch.randn(num_classes, feat_dim, generator=generator) * 0.01
        state["model.classifier.bias"] = torch.zeros(num_classes)
    return state


def tao_forward(state: dict, images: torch.Tensor, last_stride: int = 1, neck_feat: str = "after") -> torch.Tensor:
    """TAO's Baseline eval forward, op by op from the state dict."""

    def conv(x, name, stride=1, padding=0):
        return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), stride=stride, padding=padding)

    def bn(x, name):
        return F.batch_norm(
            x,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = bn(conv(images, "model.base.conv1", stride=2, padding=3), "model.base.bn1")  # no ReLU here in TAO
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage in range(1, 5):
        stride = {1: 1, 2: 2, 3: 2, 4: last_stride}[stage]
        block = 0
        while f"model.base.layer{stage}.{block}.conv1.weight" in state:
            p = f"model.base.layer{stage}.{block}"
            step = stride if block == 0 else 1
            out = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2", stride=step, padding=1), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            residual = (
                bn(conv(x, f"{p}.downsample.0", stride=step), f"{p}.downsample.1")
                if f"{p}.downsample.0.weight" in state
                else x
            )
            x = F.relu(out + residual)
            block += 1
    if "model.base.feature.weight" in state:
        x = conv(x, "model.base.feature")
    global_feat = F.adaptive_avg_pool2d(x, 1).flatten(1)
    if "model.bottleneck.weight" not in state or neck_feat == "before":
        return global_feat
    return F.batch_norm(
        global_feat,
        state["model.bottleneck.running_mean"],
        state["model.bottleneck.running_var"],
        state["model.bottleneck.weight"],
        state["model.bottleneck.bias"],
        training=False,
        eps=1e-5,
    )


def lightning_checkpoint(state: dict, hyper_parameters=None) -> dict:
    """What TAO's Lightning Trainer writes (TAO's module does not save hyper-parameters; older setups may)."""
    checkpoint = {
        "epoch": 119,
        "global_step": 12345,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    if hyper_parameters is not None:
        checkpoint["hyper_parameters"] = hyper_parameters
        checkpoint["hparams_name"] = "kwargs"
    return checkpoint


def images(height=64, width=32, batch=3) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def assert_same_embeddings(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert F.cosine_similarity(actual, expected, dim=1).min() >= 0.999
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feat_dim", [2048, 256])
def test_tao_resnet_checkpoint_gives_taos_embeddings(tmp_path, feat_dim):
    state = tao_state_dict(feat_dim=feat_dim)
    path = tmp_path / "tao.pth"
    torch.save(lightning_checkpoint(state), path)
    config = load_experiment(None, ["model.input_height=64", "model.input_width=32"])
    model, preprocessing, trained_config = load_trained_model(str(path), "evaluate.checkpoint", config)
    assert not model.training and model.feat_dim == feat_dim
    assert ("base.feature.weight" in model.state_dict()) == (feat_dim != 2048)
    assert model.classifier.out_features == 7  # num_classes from the classifier weight
    assert preprocessing.input_size == (64, 32) and trained_config.model.feat_dim == feat_dim
    batch = images()
    with torch.no_grad():
        assert_same_embeddings(model(batch), tao_forward(state, batch))


def test_tao_resnet_18_is_a_bottleneck_net_and_name_follows_the_weights(tmp_path):
    state = tao_state_dict(layers=(2, 2, 2, 2), feat_dim=128)
    path = tmp_path / "tao18.pth"
    torch.save(lightning_checkpoint(state), path)
    config = load_experiment(None, ["model.backbone=resnet_50", "model.input_height=64", "model.input_width=32"])
    model, _, trained_config = load_trained_model(str(path), "export.checkpoint", config)
    assert trained_config.model.backbone == "resnet_18"  # (2, 2, 2, 2) Bottleneck blocks: TAO's resnet_18
    batch = images()
    with torch.no_grad():
        assert_same_embeddings(model(batch), tao_forward(state, batch))


def test_hyper_parameters_in_the_checkpoint_win_over_the_spec(tmp_path, caplog):
    state = tao_state_dict(feat_dim=64)
    spec = OmegaConf.create(
        {
            "model": {
                "backbone": "resnet_50",
                "last_stride": 2,
                "neck_feat": "before",
                "input_height": 96,
                "input_width": 32,
            },
            "dataset": {"pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.2, 0.2, 0.2]},
        }
    )
    path = tmp_path / "tao_hp.pth"
    torch.save(lightning_checkpoint(state, {"experiment_spec": spec, "prepare_for_training": True}), path)
    config = load_experiment(None, ["model.input_height=64", "model.input_width=32", "model.neck_feat=after"])
    with caplog.at_level("INFO", logger="reid_tao"):
        model, preprocessing, _ = load_trained_model(str(path), "inference.checkpoint", config)
    assert "from the checkpoint's hyper_parameters" in caplog.text
    assert preprocessing.input_size == (96, 32)
    assert preprocessing.pixel_mean == (0.5, 0.5, 0.5) and preprocessing.pixel_std == (0.2, 0.2, 0.2)
    batch = images(96, 32)
    with torch.no_grad():
        assert_same_embeddings(model(batch), tao_forward(state, batch, last_stride=2, neck_feat="before"))


def test_without_hyper_parameters_settings_come_from_the_spec_and_the_log_says_so(tmp_path, caplog):
    state = tao_state_dict(feat_dim=64, neck=False)
    path = tmp_path / "tao_noneck.pth"
    torch.save(lightning_checkpoint(state), path)
    config = load_experiment(None, ["model.input_height=64", "model.input_width=32", "model.last_stride=2"])
    with caplog.at_level("INFO", logger="reid_tao"):
        model, _, trained_config = load_trained_model(str(path), "evaluate.checkpoint", config)
    assert "from the current spec" in caplog.text and trained_config.model.neck == ""
    assert model.classifier.bias is not None  # TAO's neck-less classifier has a bias
    batch = images()
    with torch.no_grad():
        assert_same_embeddings(model(batch), tao_forward(state, batch, last_stride=2))


def test_unknown_and_tao_swin_checkpoints_fail_in_one_line(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}}, other)
    with pytest.raises(DataError, match="neither a reid_tao checkpoint nor a TAO"):
        load_trained_model(str(other), "evaluate.checkpoint")
    swin = tmp_path / "swin.pth"
    torch.save(
        lightning_checkpoint(
            {
                "model.base.patch_embed.projection.weight": torch.zeros(96, 3, 4, 4),
                "model.classifier.weight": torch.zeros(5, 768),
            }
        ),
        swin,
    )
    with pytest.raises(DataError, match="TAO Swin checkpoint") as error:
        load_trained_model(str(swin), "evaluate.checkpoint")
    assert "\n" not in str(error.value)


def test_evaluate_inference_export_through_the_cli(tiny_market, tmp_path, capsys):
    import numpy as np
    import onnxruntime
    from PIL import Image

    from reid_tao.data.preprocessing import Preprocessing

    state = tao_state_dict(feat_dim=32, num_classes=751)
    checkpoint = tmp_path / "tao_model.pth"
    torch.save(lightning_checkpoint(state), checkpoint)
    spec = [
        f"results_dir={tmp_path}",
        "model.input_height=32",
        "model.input_width=16",
        "dataset.num_workers=0",
        "dataset.pixel_mean=[0.4,0.5,0.6]",
        "dataset.pixel_std=[0.2,0.25,0.3]",
        f"dataset.query_dataset_dir={tiny_market / 'query'}",
        f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
    ]

    assert main(["evaluate", f"evaluate.checkpoint={checkpoint}"] + spec) == 0, capsys.readouterr().err
    assert "TAO ResNet checkpoint" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["mAP"] <= 1 and metrics["num_query"] == 4

    output = tmp_path / "emb.json"
    assert (
        main(
            [
                "inference",
                f"inference.checkpoint={checkpoint}",
                f"inference.query_dataset={tiny_market / 'query'}",
                f"inference.output_file={output}",
            ]
            + spec
        )
        == 0
    ), capsys.readouterr().err
    entries = json.loads(output.read_text())
    transform = Preprocessing(
        input_size=(32, 16), pixel_mean=(0.4, 0.5, 0.6), pixel_std=(0.2, 0.25, 0.3)
    ).eval_transform()
    batch = torch.stack([transform(Image.open(entry["img_path"]).convert("RGB")) for entry in entries])
    expected = tao_forward(state, batch)
    assert_same_embeddings(torch.tensor([entry["embedding"] for entry in entries]), expected)

    onnx_file = tmp_path / "tao.onnx"
    assert main(["export", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"] + spec) == 0, (
        capsys.readouterr().err
    )
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run(None, {"input": batch.numpy()})
    assert_same_embeddings(torch.from_numpy(np.asarray(onnx_features)), expected)
    sidecar = json.loads(onnx_file.with_suffix(".json").read_text())
    assert sidecar["feature_dim"] == 32 and sidecar["input_shape"] == ["batch", 3, 32, 16]


# ------------------------------------------------------------------ model.pretrain_choice=self with other files
def self_config(market, tmp_path, path, backbone, *extra):
    return load_experiment(
        None,
        tiny_overrides(
            market,
            tmp_path / "r",
            **{
                "model.pretrain_choice": "self",
                "model.pretrained_model_path": str(path),
                "model.backbone": backbone,
                **dict(item.split("=", 1) for item in extra),
            },
        ),
    )


@pytest.fixture(scope="module")
def tao_resnet50_file(tmp_path_factory):
    state = tao_state_dict(layers=(3, 4, 6, 3), feat_dim=256, num_classes=751)
    path = tmp_path_factory.mktemp("tao50") / "model_epoch_119.pth"
    torch.save(lightning_checkpoint(state), path)
    return path, state


def test_self_with_a_tao_checkpoint_loads_its_backbone(tiny_market, tmp_path, tao_resnet50_file, caplog):
    from reid_tao.builders import build_model

    path, state = tao_resnet50_file
    with caplog.at_level("INFO", logger="reid_tao"):
        model = build_model(self_config(tiny_market, tmp_path, path, "resnet_50"), num_classes=6)
    own = model.backbone.state_dict()
    tao_backbone = {
        k[len("model.base.") :]: v
        for k, v in state.items()
        if k.startswith("model.base.") and not k.startswith("model.base.feature.")
    }
    assert set(own) == set(tao_backbone)
    assert all(torch.equal(own[name], value) for name, value in tao_backbone.items())
    assert model.classifier.weight.shape == (6, model.feat_dim)  # a new classifier for the new identities
    assert "loaded 265/265 backbone tensors" in caplog.text and "is not a reid_tao checkpoint" in caplog.text
    assert "ReLU after the stem" in caplog.text  # the one non-weight difference is said


@pytest.mark.parametrize("backbone", ["resnet_34", "resnet_18"])
def test_self_with_a_tao_checkpoint_names_the_block_mismatch(tiny_market, tmp_path, tao_resnet50_file, backbone):
    from reid_tao.builders import build_model

    path, _ = tao_resnet50_file
    with pytest.raises(DataError, match="Bottleneck blocks .* model.backbone=resnet_50") as error:
        build_model(self_config(tiny_market, tmp_path, path, backbone), num_classes=6)
    assert "BasicBlock" in str(error.value) and "\n" not in str(error.value)


def to_tao_swin_layout(microsoft: dict) -> dict:
    """Official Swin keys -> TAO's (SOLIDER/mmcv) Swin as its Lightning state dict, after TAO's swin_converter:
    stages.*, attn.w_msa, ffn.layers, patch merging in nn.Unfold order, final norm as norm3."""
    tao = {}
    for name, value in microsoft.items():
        if name.startswith("head") or name.endswith(("relative_position_index", "attn_mask")):
            continue
        name = name.replace("attn.", "attn.w_msa.").replace("mlp.fc1.", "ffn.layers.0.0.")
        name = name.replace("mlp.fc2.", "ffn.layers.1.").replace("patch_embed.proj.", "patch_embed.projection.")
        if "downsample.reduction" in name:
            out_ch, in_ch = value.shape
            value = value.reshape(out_ch, 4, in_ch // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_ch, in_ch)
        elif "downsample.norm" in name:
            value = value.reshape(4, -1)[[0, 2, 1, 3], :].transpose(0, 1).reshape(-1)
        name = (
            name.replace("layers", "stages", 1).replace("norm.", "norm3.")
            if name.startswith("norm.")
            else name.replace("layers", "stages", 1)
        )
        tao[f"model.base.{name}"] = value
    tao["model.base.semantic_embed_w.0.weight"] = torch.zeros(192, 2)  # SOLIDER's, no counterpart here
    tao["model.bottleneck.weight"] = torch.ones(768)
    tao["model.classifier.weight"] = torch.zeros(751, 768)
    return tao


@pytest.mark.parametrize("layout", ["timm", "microsoft", "tao"])
def test_self_with_a_swin_weights_file(tiny_market, tmp_path, layout, caplog):
    import timm
    from test_weights import to_microsoft_layout

    from reid_tao.builders import build_model
    from reid_tao.model.backbones.swin import fit_window_sizes

    name, size = "swin_tiny_patch4_window7_224", (64, 32)
    torch.manual_seed(3)
    if layout == "timm":  # timm's own layout at this input size (what reid_tao and timm users save)
        source = timm.create_model(name, pretrained=False, img_size=size, window_size=fit_window_sizes(size))
        torch.save(source.state_dict(), tmp_path / "swin.pth")
    elif layout == "microsoft":  # the official release at 224x224
        source = timm.create_model(name, pretrained=False)
        torch.save({"model": to_microsoft_layout(source)}, tmp_path / "swin.pth")
    else:  # a Swin checkpoint trained with TAO (what TAO's Swin spec fine-tunes from with pretrain_choice self)
        source = timm.create_model(name, pretrained=False)
        with torch.no_grad():  # LayerNorm weights start as ones: make every tensor tell its order
            for parameter in source.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
        torch.save(lightning_checkpoint(to_tao_swin_layout(to_microsoft_layout(source))), tmp_path / "swin.pth")
    config = self_config(
        tiny_market, tmp_path, tmp_path / "swin.pth", name, "model.input_height=64", "model.input_width=32"
    )
    with caplog.at_level("INFO", logger="reid_tao"):
        model = build_model(config, num_classes=6)
    assert "is not a reid_tao checkpoint" in caplog.text and "loaded 1" in caplog.text
    target = model.backbone.model
    assert torch.equal(target.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(target.layers[2].blocks[3].mlp.fc2.weight, source.layers[2].blocks[3].mlp.fc2.weight)
    for stage in (1, 2, 3):  # patch merging: TAO's unfold order maps back onto timm's
        assert torch.equal(
            target.layers[stage].downsample.reduction.weight, source.layers[stage].downsample.reduction.weight
        )
        assert torch.equal(target.layers[stage].downsample.norm.weight, source.layers[stage].downsample.norm.weight)
    assert torch.equal(target.norm.weight, source.norm.weight)


def test_tao_network_constructors_name_their_bad_arguments():
    from reid_tao.model.tao_baseline import TaoBaseline, TaoResNet

    with pytest.raises(ValueError, match="layers"):
        TaoResNet(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="last_stride"):
        TaoResNet(layers=TINY_LAYERS, last_stride=3)
    with pytest.raises(ValueError, match="neck_feat"):
        TaoBaseline(TaoResNet(layers=TINY_LAYERS, feat_dim=16), num_classes=3, neck_feat="middle")
