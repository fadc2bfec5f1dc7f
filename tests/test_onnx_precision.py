"""fp16 and INT8 exports (export.data_type), and evaluate / Embedder on exported models."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from reid_tao.cli import main

from helpers import write_untrained_checkpoint


def export(checkpoint: Path, onnx_file: Path, *extra: str) -> int:
    return main(
        [
            "export",
            f"results_dir={onnx_file.parent}",
            f"export.checkpoint={checkpoint}",
            f"export.onnx_file={onnx_file}",
            *extra,
        ]
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


TINY_STEM = "/backbone/backbone.0/backbone.0.0/Conv"  # the first convolution of tests/support/tiny_backbone.py


@pytest.fixture(scope="module")
def models(tiny_market, tmp_path_factory):
    """An untrained tiny checkpoint (32x16, 32-d) and its fp32, fp16 and INT8 exports (INT8 for TensorRT, the
    default, and for the CPU)."""
    root = tmp_path_factory.mktemp("precision")
    checkpoint = write_untrained_checkpoint(tiny_market, root / "model.pth")
    files = {name: root / f"model_{name}.onnx" for name in ("fp32", "fp16", "int8", "int8_cpu")}
    assert export(checkpoint, files["fp32"]) == 0
    assert export(checkpoint, files["fp16"], "export.data_type=fp16") == 0
    calibration = (
        "export.data_type=int8",
        "export.calibration_images=16",
        f"export.calibration_dataset={tiny_market / 'bounding_box_train'}",
    )
    assert export(checkpoint, files["int8"], *calibration) == 0
    assert export(checkpoint, files["int8_cpu"], *calibration, "export.int8_target=cpu") == 0
    return checkpoint, files


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_int8_export_is_quantized_runs_and_agrees_with_the_checkpoint(tiny_market, models):
    from reid_tao import Embedder

    checkpoint, files = models
    graph = onnx.load(str(files["int8"])).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    sidecar = json.loads(files["int8"].with_suffix(".json").read_text())
    assert sidecar["data_type"] == "int8" and sidecar["float_nodes"][0] == TINY_STEM
    assert sidecar["int8_target"] == "tensorrt"
    assert 0.9 < sidecar["parity_cosine_min"] <= sidecar["parity_cosine_mean"] <= 1
    reid = yaml.safe_load(files["int8"].with_name("model_int8_nvdcf_reid.yml").read_text())["ReID"]
    assert reid["networkMode"] == 2 and reid["onnxFile"] == str(files["int8"].resolve())
    assert reid["modelEngineFile"].endswith("_int8.engine")
    # Embedder runs the INT8 file; its embeddings point where the checkpoint's do
    paths = sorted(str(p) for p in (tiny_market / "bounding_box_test").iterdir())
    reference = Embedder.from_checkpoint(checkpoint, device="cpu").embed(paths)
    int8 = Embedder.from_checkpoint(files["int8"], device="cpu")
    assert int8.model.data_type == "int8"
    agreement = cosines(reference, int8.embed(paths))
    assert agreement.mean() > 0.95 and agreement.min() > 0.9


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_int8_cpu_export_records_its_target_agrees_and_writes_no_tensorrt_config(tiny_market, models):
    from reid_tao import Embedder

    checkpoint, files = models
    sidecar = json.loads(files["int8_cpu"].with_suffix(".json").read_text())
    assert sidecar["data_type"] == "int8" and sidecar["int8_target"] == "cpu"
    assert 0.95 < sidecar["parity_cosine_min"] <= sidecar["parity_cosine_mean"] <= 1
    # the stem is quantized too: only the embedding head stays in float
    assert sidecar["float_nodes"] and not any(node.endswith("/Conv") for node in sidecar["float_nodes"])
    quantize = [node for node in onnx.load(str(files["int8_cpu"])).graph.node if node.op_type == "QuantizeLinear"]
    assert quantize and all(node.input[2] for node in quantize)
    # TensorRT refuses unsigned asymmetric INT8: no DeepStream config that would point it at this file
    assert not files["int8_cpu"].with_name("model_int8_cpu_nvdcf_reid.yml").exists()
    paths = sorted(str(p) for p in (tiny_market / "bounding_box_test").iterdir())
    reference = Embedder.from_checkpoint(checkpoint, device="cpu").embed(paths)
    agreement = cosines(reference, Embedder.from_checkpoint(files["int8_cpu"], device="cpu").embed(paths))
    assert agreement.mean() > 0.95 and agreement.min() > 0.9


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_fp16_export_keeps_float32_inputs_and_agrees(tiny_market, models):
    from reid_tao import Embedder

    checkpoint, files = models
    model = onnx.load(str(files["fp16"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    reid = yaml.safe_load(files["fp16"].with_name("model_fp16_nvdcf_reid.yml").read_text())["ReID"]
    assert reid["networkMode"] == 1
    paths = sorted(str(p) for p in (tiny_market / "query").iterdir())
    reference = Embedder.from_checkpoint(checkpoint, device="cpu").embed(paths)
    assert cosines(reference, Embedder.from_checkpoint(files["fp16"], device="cpu").embed(paths)).min() > 0.999


def evaluate(model: Path, market: Path, results: Path) -> dict:
    assert (
        main(
            [
                "evaluate",
                f"results_dir={results}",
                f"evaluate.checkpoint={model}",
                "dataset.num_workers=0",
                "evaluate.accelerator=cpu",
                "dataset.val_batch_size=8",
                f"evaluate.query_dataset={market / 'query'}",
                f"evaluate.test_dataset={market / 'bounding_box_test'}",
            ]
        )
        == 0
    )
    return json.loads((results / "evaluate" / "metrics.json").read_text())


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_evaluate_an_onnx_file_like_a_checkpoint(tiny_market, models, tmp_path):
    checkpoint, files = models
    metrics = {
        name: evaluate(path, tiny_market, tmp_path / name)
        for name, path in (("pth", checkpoint), ("fp32", files["fp32"]), ("int8", files["int8"]))
    }
    for key in ("mAP", "mINP"):
        assert metrics["fp32"][key] == pytest.approx(metrics["pth"][key], abs=1e-4)
    assert metrics["fp32"]["cmc"] == pytest.approx(metrics["pth"]["cmc"], abs=1e-4)
    assert metrics["fp32"]["precision"] == "fp32" and metrics["int8"]["precision"] == "int8"
    assert metrics["int8"]["mAP"] == pytest.approx(metrics["pth"]["mAP"], abs=0.25)  # it ran and ranked
    for name in ("fp32", "int8"):
        folder = tmp_path / name / "evaluate"
        assert (folder / "cmc_curve.png").is_file() and (folder / "sampled_matches.png").is_file()
        status = [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]
        assert status[-1]["message"] == "Evaluate finished successfully." and "mAP" in status[-1]["kpi"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "one image"])
def test_a_bad_calibration_folder_gets_one_line(tiny_market, models, tmp_path, capsys, case):
    checkpoint, _ = models
    folder = tmp_path / "calibration"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":
        for i in range(5):
            (folder / f"broken_{i}.jpg").write_bytes(b"not a jpeg")
    if case == "one image":
        (folder / "0001_c1s1_000001_00.jpg").write_bytes(next((tiny_market / "query").iterdir()).read_bytes())
    code = export(checkpoint, tmp_path / "m.onnx", "export.data_type=int8", f"export.calibration_dataset={folder}")
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(folder) in err or "broken_" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_int8_needs_a_calibration_folder(tiny_market, models, tmp_path, capsys):
    checkpoint, _ = models
    assert export(checkpoint, tmp_path / "m.onnx", "export.data_type=int8") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "export.calibration_dataset" in err
    assert export(checkpoint, tmp_path / "m.onnx", "export.data_type=int4") != 0
    assert "export.data_type" in capsys.readouterr().err


def test_default_file_names_say_the_data_type():
    from omegaconf import OmegaConf

    from reid_tao.builders import onnx_path_for

    for data_type, target, name in (
        ("fp32", "tensorrt", "model.onnx"),
        ("fp16", "tensorrt", "model_fp16.onnx"),
        ("int8", "tensorrt", "model_int8.onnx"),
        ("int8", "cpu", "model_int8_cpu.onnx"),
        ("fp16", "cpu", "model_fp16.onnx"),
    ):
        config = OmegaConf.create(
            {
                "results_dir": "/res",
                "export": {"onnx_file": None, "data_type": data_type, "results_dir": None, "int8_target": target},
            }
        )
        # in export's results folder, not beside the checkpoint (train/)
        assert onnx_path_for(config, "/res/train/model.pth") == Path("/res/export") / name


def test_calibration_fields_without_int8_are_noticed():
    from reid_tao.builders import load_experiment
    from reid_tao.config.notices import field_notices

    config = load_experiment(None, ["export.data_type=fp16", "export.calibration_images=10"])
    expected = "export.calibration_images has no effect: only export.data_type=int8 calibrates"
    assert field_notices(config, "export") == [expected]
    config = load_experiment(None, ["export.calibration_dataset=/data/train"])
    assert len(field_notices(config, "export")) == 1 and "calibration_dataset" in field_notices(config, "export")[0]
    assert (
        field_notices(load_experiment(None, ["export.data_type=int8", "export.calibration_dataset=/d"]), "export") == []
    )
    assert field_notices(load_experiment(None, ["export.int8_target=cpu"]), "export") == [
        "export.int8_target='cpu' has no effect: only export.data_type=int8 has targets"
    ]
    assert (
        field_notices(
            load_experiment(None, ["export.data_type=int8", "export.calibration_dataset=/d", "export.int8_target=cpu"]),
            "export",
        )
        == []
    )


def test_an_unknown_int8_target_is_one_line(tiny_market, tmp_path, capsys):
    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "model.pth")
    assert (
        export(
            checkpoint,
            tmp_path / "m.onnx",
            "export.data_type=int8",
            "export.int8_target=arm",
            f"export.calibration_dataset={tiny_market / 'bounding_box_train'}",
        )
        != 0
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "export.int8_target" in err and "'cpu'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_onnxruntime_warnings_are_quieted(tmp_path):
    """onnxruntime's own warnings reach stderr with colour escape codes even when piped; reid_tao's sessions
    log errors only (a graph with an unused initializer makes onnxruntime warn about removing it)."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["fc_pred"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("fc_pred", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "unused")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    code = (
        "import sys; from reid_tao.deploy.precision import session_runner; "
        "session_runner(sys.argv[1], 'input', 'fc_pred')"
    )
    plain = "import sys, onnxruntime; onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    outcomes = [
        subprocess.run(
            [sys.executable, "-c", source, str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120
        )
        for source in (plain, code)
    ]
    assert all(done.returncode == 0 for done in outcomes), [done.stderr[-2000:] for done in outcomes]
    assert "unused" in outcomes[0].stderr  # the warning this test silences does appear without reid_tao
    assert outcomes[1].stderr == ""


# ------------------------------------------------------------------------- INT8 targets, on the engine level
@pytest.fixture(scope="module")
def tiny_fp32(tiny_market, tmp_path_factory):
    """An untrained resnet_18's fp32 ONNX (32x16 input, 32-d), random calibration and parity batches: a real
    backbone, with the residual adds and downsample convolutions that quantization must handle."""
    import torch

    from reid_tao.builders import build_model, load_experiment
    from reid_tao.deploy.export import export_onnx

    from helpers import tiny_overrides

    root = tmp_path_factory.mktemp("int8_targets")
    config = load_experiment(None, tiny_overrides(tiny_market, root, **{"model.backbone": "resnet_18"}))
    torch.manual_seed(0)
    model = build_model(config, 6, load_pretrained=False).eval()
    export_onnx(model, root / "fp32.onnx", (32, 16), 17)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 3, 32, 16), dtype=np.float32) for _ in range(4)]
    held_out = [rng.standard_normal((16, 3, 32, 16), dtype=np.float32)]
    return root, calibration, held_out


def quantized(tiny_fp32, target: str) -> Path:
    from reid_tao.deploy.precision import Calibration, converter

    root, calibration, _ = tiny_fp32
    path = root / f"int8_{target}.onnx"
    if not path.exists():
        converter("int8", target)(root / "fp32.onnx", path, Calibration("input", calibration))
    return path


def zero_points(path: Path, op_type: str) -> list:
    """The zero-point arrays of every ``op_type`` node (QuantizeLinear / DequantizeLinear) of the file."""
    model = onnx.load(str(path))
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    return [initializers[node.input[2]] for node in model.graph.node if node.op_type == op_type]


def test_tensorrt_int8_has_signed_zero_points_of_zero_everywhere(tiny_fp32):
    """TensorRT accepts only symmetric signed INT8: every activation and weight zero point is an int8 0 (the
    convolution biases, int32, too)."""
    path = quantized(tiny_fp32, "tensorrt")
    activations, dequantized = zero_points(path, "QuantizeLinear"), zero_points(path, "DequantizeLinear")
    assert len(activations) > 10 and len(dequantized) > len(activations)  # weights are dequantized too
    assert all(point.dtype == np.int8 for point in activations)
    assert {point.dtype for point in dequantized} == {np.dtype(np.int8), np.dtype(np.int32)}
    assert not any(point.any() for point in activations + dequantized)


def optimized_op_types(path: Path, folder: Path) -> dict:
    """op type -> count in the graph onnxruntime's CPU provider runs (extended optimisation, no CPU layouts)."""
    from collections import Counter

    from reid_tao.deploy.precision import save_optimized

    target = folder / f"{path.stem}_optimized.onnx"
    save_optimized(path, target, "extended")
    return Counter(node.op_type for node in onnx.load(str(target)).graph.node)


def test_cpu_int8_is_u8s8_and_every_quantized_conv_runs_as_qlinearconv(tiny_fp32, tmp_path):
    """The cpu target's choices, as the file shows them: unsigned activations with calibrated (not all 0) zero
    points, symmetric int8 weights per output channel on every convolution (the stem's too), the head in float;
    onnxruntime fuses every convolution into QLinearConv (the tensorrt file leaves most of them as float Conv
    between Dequantize/Quantize pairs: what made it slow on x86)."""
    path = quantized(tiny_fp32, "cpu")
    activations = zero_points(path, "QuantizeLinear")
    assert activations and all(point.dtype == np.uint8 for point in activations)
    assert any(point.any() for point in activations)  # asymmetric: zero points where the calibration put them
    graph = onnx.load(str(path)).graph
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 20  # resnet_18: stem + 16 block convs + 3 downsamples
    assert not [node.name for node in convs if node.input[1] in initializers]  # no float weights
    producers = {node.output[0]: node for node in graph.node}
    for conv in convs:
        weight = producers[conv.input[1]]  # DequantizeLinear(int8 weights, per-channel scale, zero 0)
        assert weight.op_type == "DequantizeLinear"
        channels = initializers[weight.input[0]].shape[0]
        assert initializers[weight.input[0]].dtype == np.int8 and initializers[weight.input[1]].shape == (channels,)
        assert not initializers[weight.input[2]].any()
    ops = optimized_op_types(path, tmp_path)
    assert ops["QLinearConv"] == 20 and ops["Conv"] == 0
    # the ReLUs between convolutions fold into the quantized ranges; the head (the last Add + ReLU, the pooling,
    # the reduction + BNNeck Gemm) stays float
    assert ops["Relu"] == 1 and ops["Add"] == 1 and ops["ReduceMean"] == 1 and ops["Gemm"] == 1
    assert optimized_op_types(quantized(tiny_fp32, "tensorrt"), tmp_path)["QLinearConv"] < 19


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_int8_targets_agree_with_fp32(tiny_fp32, target):
    from reid_tao.deploy.precision import cosine_parity, session_runner

    root, _, held_out = tiny_fp32
    mean, minimum = cosine_parity(
        session_runner(root / "fp32.onnx", "input", "fc_pred"),
        session_runner(quantized(tiny_fp32, target), "input", "fc_pred"),
        held_out,
    )
    assert minimum > 0.99 and mean > 0.995


def test_int8_calibrates_on_evaluation_transformed_images(tiny_market, tmp_path, monkeypatch):
    """The calibration batches are the images as evaluation sees them (resize + normalise), never with the
    training transform's flips, crops and erasing: every calibration image equals the evaluation transform of
    one image of the folder."""
    import torch
    from PIL import Image

    from reid_tao.data.preprocessing import Preprocessing
    from reid_tao.deploy import precision as onnx_precision

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "model.pth")
    seen = []
    reader = onnx_precision.calibration_reader

    def recording_reader(input_name, batches):
        batches = list(batches)
        seen.extend(batches)
        return reader(input_name, batches)

    monkeypatch.setattr(onnx_precision, "calibration_reader", recording_reader)
    folder = tiny_market / "bounding_box_train"
    assert (
        export(
            checkpoint,
            tmp_path / "m.onnx",
            "export.data_type=int8",
            "export.calibration_images=20",
            f"export.calibration_dataset={folder}",
        )
        == 0
    )
    calibrated = np.concatenate(seen)
    assert calibrated.shape == (20, 3, 32, 16)
    transform = Preprocessing.from_dict(json.loads((tmp_path / "m.json").read_text())).eval_transform()
    with torch.no_grad():
        expected = np.stack([transform(Image.open(path).convert("RGB")).numpy() for path in sorted(folder.iterdir())])
    distance = np.abs(calibrated[:, None] - expected[None]).reshape(len(calibrated), len(expected), -1).max(-1)
    assert distance.min(1).max() < 1e-6  # each calibration image is one folder image, as evaluation reads it
