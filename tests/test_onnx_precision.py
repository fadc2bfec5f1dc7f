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
    return main(["export", f"results_dir={onnx_file.parent}", f"export.checkpoint={checkpoint}",
                 f"export.onnx_file={onnx_file}", *extra])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def models(tiny_market, tmp_path_factory):
    """An untrained tiny checkpoint (32x16, 32-d) and its fp32, fp16 and INT8 exports."""
    root = tmp_path_factory.mktemp("precision")
    checkpoint = write_untrained_checkpoint(tiny_market, root / "model.pth")
    files = {name: root / f"model_{name}.onnx" for name in ("fp32", "fp16", "int8")}
    assert export(checkpoint, files["fp32"]) == 0
    assert export(checkpoint, files["fp16"], "export.data_type=fp16") == 0
    assert export(checkpoint, files["int8"], "export.data_type=int8", "export.calibration_images=16",
                  f"export.calibration_dataset={tiny_market / 'bounding_box_train'}") == 0
    return checkpoint, files


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_int8_export_is_quantized_runs_and_agrees_with_the_checkpoint(tiny_market, models):
    from reid_tao import Embedder

    checkpoint, files = models
    graph = onnx.load(str(files["int8"])).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    sidecar = json.loads(files["int8"].with_suffix(".json").read_text())
    assert sidecar["data_type"] == "int8" and sidecar["float_nodes"][0] == "/backbone/conv1/Conv"
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
    assert main(["evaluate", f"results_dir={results}", f"evaluate.checkpoint={model}", "dataset.num_workers=0",
                 "evaluate.accelerator=cpu", "dataset.val_batch_size=8", f"evaluate.query_dataset={market / 'query'}",
                 f"evaluate.test_dataset={market / 'bounding_box_test'}"]) == 0
    return json.loads((results / "evaluate" / "metrics.json").read_text())


@pytest.mark.slow  # exports (and evaluations) of a tiny model
def test_evaluate_an_onnx_file_like_a_checkpoint(tiny_market, models, tmp_path):
    checkpoint, files = models
    metrics = {name: evaluate(path, tiny_market, tmp_path / name) for name, path in
               (("pth", checkpoint), ("fp32", files["fp32"]), ("int8", files["int8"]))}
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

    from reid_tao.tasks.export import onnx_path_for

    for data_type, name in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"), ("int8", "model_int8.onnx")):
        config = OmegaConf.create({"results_dir": "/res", "export": {"onnx_file": None, "data_type": data_type,
                                                                     "results_dir": None}})
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
    assert field_notices(load_experiment(None, ["export.data_type=int8", "export.calibration_dataset=/d"]),
                         "export") == []
