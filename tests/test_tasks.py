"""evaluate, inference and export end to end from a checkpoint trained in the test."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reid_tao.cli import main

from helpers import TINY_BACKBONE, tiny_overrides


@pytest.fixture
def trained(trained_checkpoint):
    return trained_checkpoint


def eval_overrides(market, results, checkpoint, *extra):
    # Only the dataset folders and results_dir: the model comes from the checkpoint.
    return [
        f"results_dir={results}",
        f"evaluate.checkpoint={checkpoint}",
        f"dataset.query_dataset_dir={market / 'query'}",
        f"dataset.test_dataset_dir={market / 'bounding_box_test'}",
        "dataset.num_workers=0",
        *extra,
    ]


def test_evaluate_writes_metrics_and_plots(tiny_market, trained, tmp_path, capsys):
    code = main(
        ["evaluate"]
        + eval_overrides(
            tiny_market,
            tmp_path,
            trained,
            "re_ranking.re_ranking=true",
            "re_ranking.max_rank=5",
            "re_ranking.num_query=3",
            "re_ranking.k1=4",
            "re_ranking.k2=2",
        )
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {
        "mAP",
        "mINP",
        "cmc",
        "rank1",
        "rank5",
        "rank10",
        "num_query",
        "num_gallery",
        "num_valid_query",
        "re_ranking",
        "ranking",
        "plain",
    }
    assert metrics["num_query"] == 4 and metrics["num_gallery"] == 17 and metrics["num_valid_query"] == 4
    assert len(metrics["cmc"]) == 5 and metrics["re_ranking"] is True
    assert metrics["precision"] == "32"  # evaluation defaults to fp32 on every device
    assert 0 <= metrics["mAP"] <= 1 and metrics["cmc"] == sorted(metrics["cmc"])
    # the spec asks for re-ranking: metrics.json and status.json report the re-ranked figures, named so
    assert metrics["ranking"] == "re-ranked" and "mAP" in metrics["plain"]
    assert "Rank-1" in out.out and "re-ranked" in out.out
    status = [json.loads(line) for line in (tmp_path / "evaluate" / "status.json").read_text().splitlines()]
    (kpi_line,) = [line for line in status if line["message"] == "Test metrics generated."]
    assert kpi_line["ranking"] == "re-ranked" and kpi_line["kpi"]["mAP"] == pytest.approx(metrics["mAP"])
    assert kpi_line["kpi"]["cmc_rank_1"] == pytest.approx(metrics["rank1"])
    for name in ("cmc_curve.png", "sampled_matches.png"):
        with Image.open(tmp_path / "evaluate" / name) as image:
            assert image.format == "PNG"


def test_a_writer_registered_in_the_table_is_called_with_the_result(tiny_market, trained, tmp_path, monkeypatch):
    from reid_tao.builders import load_experiment
    from reid_tao.evaluation.result import EvaluationResult
    from reid_tao.tasks import evaluate, evaluate_outputs

    seen = []

    def write_rank1(result, out):  # a new output: one function ...
        seen.append(result)
        path = out.results_dir / "rank1.txt"
        path.write_text(f"{result.plain.cmc[0]:.4f}\n")
        return path

    monkeypatch.setitem(evaluate_outputs.EVALUATE_WRITERS, "rank-1 text", write_rank1)  # ... and one entry
    result = evaluate.run(load_experiment(None, eval_overrides(tiny_market, tmp_path, trained)))
    assert isinstance(result, EvaluationResult) and seen == [result]
    assert (tmp_path / "evaluate" / "rank1.txt").read_text() == f"{result.plain.cmc[0]:.4f}\n"
    assert "rank1.txt" in (tmp_path / "evaluate" / "evaluate.log").read_text().splitlines()[-1]
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())  # the others still ran
    assert metrics["mAP"] == pytest.approx(result.plain.mAP)


def test_evaluate_prefers_evaluate_folders_and_never_inference(tiny_market, trained, tmp_path, capsys):
    # evaluate.* folders win over dataset.*; inference.* folders are never read (TAO bug B6).
    code = main(
        ["evaluate"]
        + eval_overrides(
            tiny_market,
            tmp_path,
            trained,
            "dataset.query_dataset_dir=/nonexistent/q",
            f"evaluate.query_dataset={tiny_market / 'query'}",
            "inference.query_dataset=/nonexistent/inference",
            f"evaluate.output_cmc_curve_plot={tmp_path / 'x' / 'cmc.png'}",
        )
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "x" / "cmc.png").is_file()


def test_evaluate_single_camera_data_fails_clearly(tiny_market, trained, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for path in (tiny_market / "bounding_box_test").glob("*_c1s1_*.jpg"):
        (gallery / path.name).write_bytes(path.read_bytes())
    code = main(["evaluate"] + eval_overrides(tiny_market, tmp_path, trained, f"dataset.test_dataset_dir={gallery}"))
    err = capsys.readouterr().err
    assert code == 2 and "no query" in err and len(err.strip().splitlines()) == 1


def test_evaluate_needs_a_checkpoint(tiny_market, tmp_path, capsys):
    assert main(["evaluate", f"results_dir={tmp_path}"]) == 2
    assert "evaluate.checkpoint" in capsys.readouterr().err
    assert main(["evaluate", f"evaluate.checkpoint={tmp_path / 'missing.pth'}", f"results_dir={tmp_path}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inference_writes_one_embedding_per_image(tiny_market, trained, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    for index, path in enumerate(sorted((tiny_market / "query").iterdir())):
        (loose / f"crop_{index}.png").write_bytes(path.read_bytes())  # names need not be Market's
    output = tmp_path / "emb.json"
    code = main(
        [
            "inference",
            f"results_dir={tmp_path}",
            f"inference.checkpoint={trained}",
            f"inference.query_dataset={loose}",
            f"inference.test_dataset={tiny_market / 'bounding_box_test'}",
            f"inference.output_file={output}",
            "dataset.val_batch_size=5",
            "dataset.num_workers=0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    entries = json.loads(output.read_text())
    gallery = sorted(str(p) for p in (tiny_market / "bounding_box_test").iterdir())
    assert len(entries) == 4 + len(gallery)  # every image, junk included, all batches (TAO keeps the last, B1)
    assert [e["img_path"] for e in entries[4:]] == gallery
    assert entries[0]["img_path"].endswith("crop_0.png")
    assert all(len(e["embedding"]) == 32 for e in entries)
    assert len({tuple(e["embedding"]) for e in entries}) > 1


def test_export_onnx_parity_and_overwrite(trained, tmp_path, capsys):
    import onnxruntime

    onnx_file = tmp_path / "model.onnx"
    args = ["export", f"results_dir={tmp_path}", f"export.checkpoint={trained}", f"export.onnx_file={onnx_file}"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "max abs difference" in out
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "fc_pred"
    for batch in (1, 5):  # dynamic batch axis
        (features,) = session.run(None, {"input": np.random.rand(batch, 3, 32, 16).astype(np.float32)})
        assert features.shape == (batch, 32)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["input_shape"] == ["batch", 3, 32, 16] and meta["feature_dim"] == 32
    assert main(args) == 2 and "export.overwrite=true" in capsys.readouterr().err
    assert main(args + ["export.overwrite=true"]) == 0


def test_export_parity_failure_is_reported(trained, tmp_path, monkeypatch, capsys):
    from reid_tao.deploy import export

    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # any difference now fails
    onnx_file = tmp_path / "bad.onnx"
    code = main(["export", f"results_dir={tmp_path}", f"export.checkpoint={trained}", f"export.onnx_file={onnx_file}"])
    assert code == 1 and "disagrees with PyTorch" in capsys.readouterr().err
    assert not onnx_file.exists()


def test_pretrain_choice_self_loads_backbone_and_new_classifier(tiny_market, trained, tmp_path, capsys):
    from reid_tao.builders import build_model, load_experiment
    from reid_tao.io.checkpoint_file import read_checkpoint_file

    from helpers import make_market

    other = make_market(tmp_path / "other", train_ids=range(20, 29))  # 9 new identities
    config = load_experiment(
        None,
        tiny_overrides(
            other, tmp_path / "r", **{"model.pretrain_choice": "self", "model.pretrained_model_path": str(trained)}
        ),
    )
    model = build_model(config, num_classes=9)
    source = read_checkpoint_file(trained, "x").model_state
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items() if k.startswith("backbone."))
    assert own["classifier.weight"].shape == (9, 32)
    assert "loaded" in capsys.readouterr().out


@pytest.mark.slow
def test_swin_tiny_trains_and_exports_through_the_cli(tiny_market, tmp_path, capsys):
    results = tmp_path / "swin"
    overrides = tiny_overrides(
        tiny_market,
        results,
        **{
            "model.backbone": "swin_tiny_patch4_window7_224",
            "model.input_height": 64,
            "model.input_width": 32,
            "model.reduce_feat_dim": True,
            "train.num_epochs": 1,
            "dataset.interpolation": "bicubic",
        },
    )
    assert main(["train"] + overrides) == 0, capsys.readouterr().err
    checkpoint = results / "train" / "reid_model_latest.pth"
    assert torch.load(checkpoint, weights_only=True)["reid_tao"]["preprocessing"]["interpolation"] == "bicubic"
    onnx_file = tmp_path / "swin.onnx"
    assert (
        main(["export", f"results_dir={results}", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"])
        == 0
    ), capsys.readouterr().err
    assert "max abs difference" in capsys.readouterr().out


def test_evaluate_sampled_matches_worst_shows_the_lowest_ap_queries(
    tiny_market, trained, tmp_path, monkeypatch, capsys
):
    from reid_tao.builders import load_experiment
    from reid_tao.tasks import evaluate, evaluate_outputs

    # The option and the per-query AP reach the row choice (its own test proves the lowest-AP selection),
    # and the figure labels each row with its AP.
    calls, shown = [], {}
    real = evaluate_outputs.choose_query_rows
    monkeypatch.setattr(evaluate_outputs, "choose_query_rows", lambda *a, **k: calls.append(k) or real(*a, **k))
    monkeypatch.setattr(
        evaluate_outputs,
        "plot_sampled_matches",
        lambda queries, *args, query_labels, **kwargs: shown.update(labels=query_labels),
    )
    spec = load_experiment(
        None, eval_overrides(tiny_market, tmp_path, trained, "re_ranking.num_query=2", "evaluate.sampled_matches=worst")
    )
    results = evaluate.run(spec)
    assert calls[0]["choice"] == "worst" and calls[0]["query_ap"] is results.plain.query_ap
    # the candidates are the ranking's own has-a-true-match mask, not a second computation
    assert calls[0]["candidates"] is results.valid_query is results.plain.valid_query
    worst = np.sort(results.plain.query_ap)[:2]
    assert [float(label.rsplit("AP ", 1)[1]) for label in shown["labels"]] == pytest.approx(worst, abs=0.005)
    assert main(["evaluate"] + eval_overrides(tiny_market, tmp_path, trained, "evaluate.sampled_matches=best")) == 2
    assert "evaluate.sampled_matches='best' is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("section", ["evaluate", "inference"])
def test_extraction_precision_comes_from_the_section(monkeypatch, section):
    """evaluate/inference extract in <section>.precision ("32" by default), never an automatic bf16."""
    from reid_tao.builders import load_experiment
    from reid_tao.engine import extractor

    class Stop(Exception):
        pass

    def fake_trainer(**kwargs):
        seen.append(kwargs["precision"])
        raise Stop

    monkeypatch.setattr(extractor.pl, "Trainer", fake_trainer)
    seen = []
    for overrides in ([], [f"{section}.precision=bf16-mixed"]):
        config = load_experiment(None, [f"{section}.accelerator=cpu", *overrides])
        with pytest.raises(Stop):
            extractor.extract(torch.nn.Identity(), None, config[section], 4, 0)
    assert seen == ["32", "bf16-mixed"]
    assert load_experiment(None).evaluate.precision == load_experiment(None).inference.precision == "32"


@pytest.mark.parametrize("task", ["evaluate", "inference", "export"])
def test_spec_model_values_that_differ_from_the_checkpoint_are_named_and_not_recorded(
    task, tiny_market, trained, tmp_path, capsys
):
    from omegaconf import OmegaConf

    spec_model = ["model.backbone=resnet_50", "model.input_height=256", "model.neck_feat=before"]
    args = [
        task,
        f"results_dir={tmp_path}",
        f"{task}.checkpoint={trained}",
        "dataset.num_workers=0",
        f"dataset.query_dataset_dir={tiny_market / 'query'}",
        f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
        *spec_model,
    ]
    if task == "export":
        args.append(f"export.onnx_file={tmp_path / 'model.onnx'}")
    assert main(args) == 0, capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if "differ from the checkpoint" in line]
    assert len(lines) == 1
    assert "model.backbone='resnet_50'" in lines[0] and "model.input_height=256" in lines[0]
    assert "model.neck_feat='before'" in lines[0] and f"'{TINY_BACKBONE}'" in lines[0]
    recorded = OmegaConf.load(tmp_path / task / "experiment.yaml").model
    assert (recorded.backbone, recorded.input_height, recorded.neck_feat) == (TINY_BACKBONE, 32, "after")


@pytest.mark.parametrize("opset", [7, 99])
def test_export_opset_outside_what_the_exporter_and_onnxruntime_support_is_one_line(opset, trained, tmp_path, capsys):
    from reid_tao.deploy.opsets import supported_opsets

    args = [
        "export",
        f"results_dir={tmp_path}",
        f"export.checkpoint={trained}",
        f"export.opset={opset}",
        f"export.onnx_file={tmp_path / 'model.onnx'}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    shown = f"{supported_opsets()[0]}..{supported_opsets()[-1]}"
    assert f"export.opset={opset} is not supported" in err and shown in err and "Traceback" not in err
    assert not (tmp_path / "model.onnx").exists()


def test_export_at_the_lowest_supported_opset_has_no_weights_as_inputs(trained, tmp_path, capsys):
    import onnx

    from reid_tao.deploy.opsets import supported_opsets

    onnx_file = tmp_path / "model.onnx"
    args = [
        "export",
        f"results_dir={tmp_path}",
        f"export.checkpoint={trained}",
        f"export.onnx_file={onnx_file}",
        f"export.opset={supported_opsets()[0]}",
    ]
    assert main(args) == 0, capsys.readouterr().err
    graph = onnx.load(str(onnx_file)).graph
    assert [value.name for value in graph.input] == ["input"]
