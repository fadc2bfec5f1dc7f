"""Deployment: ONNX inference, the DeepStream tracker config, the Embedder API and its README example."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reid_tao.cli import main
from reid_tao.data.preprocessing import Preprocessing
from reid_tao.deploy.deepstream import reid_block, scale_factor, write_tracker_config
from reid_tao.deploy.runtime import CPU, CUDA, execution_providers

from helpers import tiny_overrides

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def exported(trained_checkpoint, module_tmp):
    """The session's 1-epoch checkpoint (32x16 input, 32-d) and its ONNX export with sidecar and tracker config."""
    results = module_tmp / "deploy"
    results.mkdir()
    checkpoint = trained_checkpoint
    onnx_file = results / "export" / "model.onnx"
    assert (
        main(["export", f"results_dir={results}", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"])
        == 0
    )
    return checkpoint, onnx_file


def embeddings(path: Path) -> dict:
    return {entry["img_path"]: np.array(entry["embedding"]) for entry in json.loads(path.read_text())}


def test_onnx_inference_matches_pth_with_preprocessing_from_the_sidecar(tiny_market, exported, tmp_path, capsys):
    checkpoint, onnx_file = exported
    outputs = {}
    for name, model in (("pth", checkpoint), ("onnx", onnx_file)):
        outputs[name] = tmp_path / f"{name}.json"
        # The spec's model size (64x32) differs from the checkpoint's (32x16): both must ignore it.
        code = main(
            [
                "inference",
                f"results_dir={tmp_path}",
                f"inference.checkpoint={model}",
                f"inference.query_dataset={tiny_market / 'query'}",
                f"inference.test_dataset={tiny_market / 'bounding_box_test'}",
                f"inference.output_file={outputs[name]}",
                "model.input_height=64",
                "model.input_width=32",
                "dataset.pixel_mean=[0.1,0.1,0.1]",
                "dataset.val_batch_size=5",
                "dataset.num_workers=0",
                "inference.accelerator=cpu",
            ]
        )
        assert code == 0, capsys.readouterr().err
    assert "CPUExecutionProvider" in capsys.readouterr().out
    pth, onnx = embeddings(outputs["pth"]), embeddings(outputs["onnx"])
    assert list(pth) == list(onnx) and len(pth) == 4 + 18  # every image (junk too), in the same order
    assert max(float(np.abs(pth[key] - onnx[key]).max()) for key in pth) <= 1e-4


def test_one_builder_extracts_with_the_tasks_settings_from_a_pth_or_an_onnx_model(tiny_market, exported, caplog):
    from reid_tao.builders import (
        extract_features,
        extraction_precision,
        feature_batches,
        load_embedding_model,
        load_experiment,
    )
    from reid_tao.data.datasets import ImageDataset
    from reid_tao.data.layouts import split_images

    settings = ["inference.accelerator=cpu", "inference.batch_size=3", "dataset.num_workers=0"]
    configs = {
        ".pth": load_experiment(None, settings),  # (num_gpus 2 would start two processes)
        ".onnx": load_experiment(None, settings + ["inference.num_gpus=2"]),
    }  # (said to be unused)
    paths = split_images(str(tiny_market / "query"), "query")
    features, sizes, precisions = {}, {}, {}
    for model_file in exported:
        config = configs[model_file.suffix]
        model, preprocessing, _ = load_embedding_model(
            str(model_file), "inference.checkpoint", config, config.inference
        )
        dataset = ImageDataset(paths, [0] * len(paths), [0] * len(paths), preprocessing.eval_transform())
        with caplog.at_level(logging.INFO, logger="reid_tao"):
            batches = list(feature_batches(model, dataset, config, "inference"))
        sizes[model_file.suffix] = [len(batch) for batch in batches]
        features[model_file.suffix] = extract_features(model, dataset, config, "inference").cpu()
        precisions[model_file.suffix] = extraction_precision(model, config, "inference")
        assert torch.allclose(torch.cat(batches), features[model_file.suffix], atol=1e-6)
    assert sizes[".onnx"] == [3, 1]  # streamed in inference.batch_size batches
    assert torch.allclose(features[".pth"], features[".onnx"], atol=1e-4)
    assert precisions == {".pth": "32", ".onnx": "fp32"}  # inference.precision; the export's data type
    assert "ONNX inference runs in one process; inference.num_gpus=2 is not used" in caplog.text


def test_onnx_inference_needs_the_sidecar(tiny_market, exported, tmp_path, capsys):
    _, onnx_file = exported
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(onnx_file.read_bytes())
    code = main(
        [
            "inference",
            f"results_dir={tmp_path}",
            f"inference.checkpoint={alone}",
            f"inference.query_dataset={tiny_market / 'query'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "alone.json" in err and "export again" in err


def test_execution_providers_follow_the_accelerator():
    assert execution_providers("auto", [CUDA, CPU], 1) == [(CUDA, {"device_id": 1}), CPU]
    assert execution_providers("auto", [CPU]) == [CPU]
    assert execution_providers("cpu", [CUDA, CPU]) == [CPU]
    assert execution_providers("gpu", [CUDA, CPU])[0][0] == CUDA
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        execution_providers("gpu", [CPU])


def test_onnxruntime_takes_every_accelerator_the_spec_offers():
    # deploy/ does not import engine/: its own list must stay the spec's (engine.devices is the schema's table)
    from reid_tao.deploy.runtime import ACCELERATORS as ONNX_ACCELERATORS
    from reid_tao.engine.devices import ACCELERATORS

    assert ONNX_ACCELERATORS == ACCELERATORS
    for accelerator in ACCELERATORS:
        assert execution_providers(accelerator, [CUDA, CPU])[-1] == CPU


def test_export_writes_the_deepstream_tracker_config(exported):
    checkpoint, onnx_file = exported
    config_file = onnx_file.with_name("model_nvdcf_reid.yml")
    reid = yaml.safe_load(config_file.read_text())["ReID"]
    preprocessing = Preprocessing.from_dict(torch.load(checkpoint, weights_only=True)["reid_tao"]["preprocessing"])
    assert reid["inferDims"] == [3, 32, 16] and reid["reidFeatureSize"] == 32
    assert reid["offsets"] == pytest.approx([255 * m for m in preprocessing.pixel_mean])
    assert reid["netScaleFactor"] == pytest.approx(1 / (255 * 0.226))  # the tiny run's std is TAO's uniform 0.226
    assert (reid["reidType"], reid["colorFormat"], reid["networkMode"], reid["inputOrder"]) == (2, 0, 1, 0)
    assert reid["onnxFile"] == str(onnx_file.resolve()) and reid["addFeatureNormalization"] == 1
    assert reid["keepAspc"] == 0 and reid["modelEngineFile"].endswith(".engine")


def test_per_channel_std_uses_the_mean_and_says_by_how_much(tmp_path, caplog):
    imagenet = Preprocessing((256, 128), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    factor, error = scale_factor(imagenet.pixel_std)
    assert factor == pytest.approx(1 / (255 * (0.229 + 0.224 + 0.225) / 3))
    assert error == pytest.approx(0.229 / ((0.229 + 0.224 + 0.225) / 3) - 1)  # the red channel, about 1.3%
    with caplog.at_level(logging.INFO, logger="reid_tao"):
        write_tracker_config(tmp_path / "r.yml", imagenet, 256, tmp_path / "m.onnx")
    lines = [r.getMessage() for r in caplog.records if "netScaleFactor" in r.getMessage()]
    assert len(lines) == 1 and "1.3%" in lines[0] and "uniform std" in lines[0]
    assert reid_block(imagenet, 256, tmp_path / "m.onnx")["inferDims"] == [3, 256, 128]


def test_deepstream_spec_is_the_bot_recipe_with_tao_uniform_std():
    from reid_tao.builders import load_experiment

    spec = Path(__file__).resolve().parent.parent / "specs" / "market1501_deepstream.yaml"
    config = load_experiment(str(spec))
    assert config.model.feat_dim == 256 and list(config.dataset.pixel_std) == [0.226] * 3
    assert config.model.backbone == "resnet_50" and config.model.metric_loss_type == "triplet_center"
    assert scale_factor(config.dataset.pixel_std)[1] == 0


def test_embedder_pth_and_onnx_agree_on_every_input_kind(tiny_market, exported):
    from reid_tao import Embedder

    checkpoint, onnx_file = exported
    paths = sorted(str(p) for p in (tiny_market / "bounding_box_test").iterdir())[:7]
    pth, onnx = Embedder.from_checkpoint(checkpoint, batch_size=3), Embedder.from_checkpoint(onnx_file, batch_size=3)
    reference = pth.embed(paths)
    assert reference.shape == (7, 32) and reference.dtype == np.float32
    assert np.abs(onnx.embed(paths) - reference).max() <= 1e-4
    pil = [Image.open(p).convert("RGB") for p in paths]
    assert np.allclose(pth.embed(pil), reference, atol=1e-6)
    assert np.allclose(pth.embed([np.asarray(image) for image in pil]), reference, atol=1e-6)
    assert np.allclose(pth.embed(np.asarray(pil[0])), reference[:1], atol=1e-6)  # a single image
    tensor = torch.stack([pth.preprocessing.eval_transform()(image) for image in pil])
    assert np.allclose(onnx.embed(tensor), reference, atol=1e-4)
    unit = pth.embed(paths, normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"inputs\[0\]: arrays must be uint8"):
        pth.embed([np.zeros((4, 4, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="preprocessed"):
        pth.embed(torch.zeros(2, 3, 8, 8))


def test_import_reid_tao_stays_cheap():
    code = "import sys, reid_tao; print('torch' in sys.modules); reid_tao.Embedder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def readme_api_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_gallery_search_example_runs(tiny_market, exported, tmp_path, capsys):
    _, onnx_file = exported
    gallery = tiny_market / "bounding_box_test"
    query = sorted(gallery.glob("0102_*.jpg"))[0]  # a gallery image: its own best match
    code = readme_api_example()
    assert len(code.strip().splitlines()) <= 6
    for placeholder, real in (
        ("model.onnx", str(onnx_file)),
        ("gallery/*.jpg", f"{gallery}/*.jpg"),
        ("query.jpg", str(query)),
    ):
        assert f'"{placeholder}"' in code
        code = code.replace(f'"{placeholder}"', repr(real))
    exec(compile(code, "README.md", "exec"), {})
    top5 = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(top5) == 5 and top5[0] == str(query) and all(Path(p).is_file() for p in top5)


def test_embedder_onnx_default_device_falls_back_to_the_cpu_provider(exported, monkeypatch):
    from reid_tao import Embedder
    from reid_tao.errors import DataError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine with a CPU-only onnxruntime
    assert Embedder.from_checkpoint(exported[1]).model.providers == [CPU]
    with pytest.raises(DataError, match="onnxruntime-gpu"):
        Embedder.from_checkpoint(exported[1], device="cuda")


@pytest.mark.slow
def test_onnx_inference_resizes_with_the_sidecars_interpolation(tmp_path, capsys):
    """A bicubic model on images larger than its input: .pth and .onnx embeddings agree, and the sidecar's
    interpolation is what makes them agree (a bilinear sidecar moves the ONNX embeddings)."""
    from helpers import make_market

    market = make_market(tmp_path / "large", train_ids=range(1, 5), test_ids=range(101, 103), size=(96, 48))
    results = tmp_path / "run"
    assert (
        main(
            ["train"]
            + tiny_overrides(
                market,
                results,
                **{
                    "train.num_epochs": 1,
                    "dataset.interpolation": "bicubic",
                    "dataset.query_dataset_dir": "null",
                    "dataset.test_dataset_dir": "null",
                },
            )
        )
        == 0
    ), capsys.readouterr().err
    checkpoint, onnx_file = results / "train" / "reid_model_latest.pth", results / "export" / "model.onnx"
    assert (
        main(["export", f"results_dir={results}", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"])
        == 0
    ), capsys.readouterr().err
    sidecar = json.loads(onnx_file.with_suffix(".json").read_text())
    assert sidecar["interpolation"] == "bicubic" and sidecar["input_size"] == [32, 16]
    bilinear = tmp_path / "bilinear.onnx"
    bilinear.write_bytes(onnx_file.read_bytes())
    bilinear.with_suffix(".json").write_text(
        json.dumps({**sidecar, "onnx_file": bilinear.name, "interpolation": "bilinear"})
    )
    outputs = {}
    for name, model in (("pth", checkpoint), ("onnx", onnx_file), ("bilinear", bilinear)):
        outputs[name] = tmp_path / f"{name}.json"
        # the spec says bilinear (the default): inference must follow the model's own preprocessing
        code = main(
            [
                "inference",
                f"results_dir={tmp_path}",
                f"inference.checkpoint={model}",
                f"inference.query_dataset={market / 'query'}",
                f"inference.output_file={outputs[name]}",
                "dataset.interpolation=bilinear",
                "dataset.num_workers=0",
                "inference.accelerator=cpu",
            ]
        )
        assert code == 0, capsys.readouterr().err
    pth, onnx, wrong = (embeddings(outputs[name]) for name in ("pth", "onnx", "bilinear"))
    assert list(pth) == list(onnx) and len(pth) == 2
    assert max(float(np.abs(pth[key] - onnx[key]).max()) for key in pth) <= 1e-4
    assert min(float(np.abs(pth[key] - wrong[key]).max()) for key in pth) > 1e-3  # the filter matters here
