"""A crafted checkpoint or spec cannot leak or exhaust, and every bad input is one line.
(Stop signals during training, a second signal included, are in test_signals.py.)"""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_tao.builders import load_trained_model
from reid_tao.cli import main
from reid_tao.config.loader import load_config
from reid_tao.data.datasets import load_rgb
from reid_tao.data.list_file import parse_list_file
from reid_tao.deploy.runtime import OnnxModel
from reid_tao.errors import ConfigError, DataError
from reid_tao.io.checkpoint_file import read_checkpoint_file
from reid_tao.tasks.common import results_lock

from helpers import TINY_BACKBONE, tiny_overrides, write_person, write_untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- 3: stored configs are data
def crafted(tiny_market, tmp_path, change) -> Path:
    path = write_untrained_checkpoint(tiny_market, tmp_path / "model.pth")
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


def set_backbone(value):
    return lambda c: c["reid_tao"]["config"]["model"].update(backbone=value)


CRAFTED = {
    "secret": (set_backbone("${oc.env:REID_TEST_SECRET}"), "interpolation at model.backbone"),
    "resolver": (set_backbone("${no_such_resolver:x}"), "interpolation at model.backbone"),
    "backbone": (set_backbone("resnet_9000"), "model.backbone='resnet_9000' is not supported"),
    "num_classes": (lambda c: c["reid_tao"].update(num_classes="6"), "num_classes '6' is not a positive whole"),
    "classes_vs_rows": (lambda c: c["reid_tao"].update(num_classes=7), "disagrees with its classifier"),
    "classes_bound": (
        lambda c: (c["reid_tao"].update(num_classes=10**9), c["state_dict"].pop("model.classifier.weight")),
        "over 1000000",
    ),
    "tensor": (lambda c: c["state_dict"].pop("model.bottleneck.weight"), "missing bottleneck.weight"),
    "input_size": (lambda c: c["reid_tao"]["config"]["model"].update(input_height=20000), "between 1 and 4096"),
    "stored_size": (lambda c: c["reid_tao"]["preprocessing"].update(input_size=[20000, 20000]), "over 4096"),
    "type": (lambda c: c["reid_tao"]["config"]["model"].update(feat_dim="wide"), "model.feat_dim"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_checkpoint_config_is_one_line_and_never_resolved(case, tiny_market, tmp_path, monkeypatch):
    monkeypatch.setenv("REID_TEST_SECRET", "hunter2-secret")
    change, says = CRAFTED[case]
    path = crafted(tiny_market, tmp_path, change)
    with pytest.raises(DataError, match="evaluate.checkpoint") as error:
        load_trained_model(str(path), "evaluate.checkpoint")
    message = str(error.value)
    assert says in message and "\n" not in message and "hunter2" not in message


def test_resume_with_another_backbone_names_both(tiny_market, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    write_untrained_checkpoint(tiny_market, tmp_path / "train" / "reid_model_latest.pth")  # the tiny backbone
    code = main(["train", *tiny_overrides(tiny_market, tmp_path, **{"model.backbone": "resnet_50"})])
    err = one_line(capsys)
    assert code == 2 and f"holds a {TINY_BACKBONE} model" in err and "model.backbone=resnet_50" in err


# --------------------------------------------------------------------------- 4, 7: export and its sidecar
@pytest.fixture(scope="module")
def exported(tiny_market, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    checkpoint = write_untrained_checkpoint(tiny_market, folder / "model.pth")
    onnx_file = folder / "model.onnx"
    assert (
        main(["export", f"results_dir={folder}", f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"])
        == 0
    )
    return checkpoint, onnx_file


def test_export_refuses_a_model_file_that_its_sidecar_would_overwrite(exported, tmp_path, capsys):
    checkpoint, _ = exported
    capsys.readouterr()
    code = main(
        [
            "export",
            f"results_dir={tmp_path}",
            f"export.checkpoint={checkpoint}",
            f"export.onnx_file={tmp_path / 'model.json'}",
        ]
    )
    assert code == 2 and "name the model file *.onnx" in one_line(capsys)
    assert not (tmp_path / "model.json").exists()


def test_export_checks_all_its_targets_before_writing_any(exported, tmp_path, capsys):
    checkpoint, _ = exported
    os.mkfifo(tmp_path / "model.json")  # stands for a device at the sidecar's path
    capsys.readouterr()
    code = main(
        [
            "export",
            f"results_dir={tmp_path}",
            f"export.checkpoint={checkpoint}",
            f"export.onnx_file={tmp_path / 'model.onnx'}",
        ]
    )
    assert code == 1 and "model.json: it is a FIFO (named pipe)" in one_line(capsys)
    assert not (tmp_path / "model.onnx").exists()  # not a model without its sidecar


@pytest.mark.parametrize(
    "lie, says",
    [
        ({"input_size": [64, 32]}, "input size [3, 64, 32]"),
        ({"input_name": "images"}, "input 'images'"),
        ({"output_name": "logits"}, "output 'logits'"),
    ],
)
def test_an_onnx_sidecar_that_lies_about_the_graph_is_one_line(exported, tmp_path, lie, says):
    _, onnx_file = exported
    copy = tmp_path / "model.onnx"
    copy.write_bytes(onnx_file.read_bytes())
    sidecar = json.loads(onnx_file.with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps({**sidecar, **lie}))
    with pytest.raises(DataError, match="does not describe model.onnx") as error:
        OnnxModel(copy, "inference.checkpoint", "cpu")
    assert says in str(error.value)


# The inference output is being written when SIGTERM comes: the temporary file must go.
KILLED_INFERENCE = """
import os, signal, sys
import reid_tao.tasks.inference as inference
from reid_tao.cli import main

real = inference.json.dump
def dump(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
inference.json.dump = dump
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_during_onnx_inference_leaves_no_temporary_file(exported, tiny_market, tmp_path):
    _, onnx_file = exported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_INFERENCE,
            "inference",
            f"results_dir={tmp_path}",
            f"inference.checkpoint={onnx_file}",
            f"inference.query_dataset={tiny_market / 'query'}",
            "inference.accelerator=cpu",
            "dataset.num_workers=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("reid inference:")]
    assert len(ours) == 1 and "stopped by SIGTERM" in ours[0] and "Traceback" not in done.stderr
    assert [p.name for p in (tmp_path / "inference").iterdir() if p.name.startswith(".inference.json")] == []
    last = json.loads((tmp_path / "inference" / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "FAILURE" and "stopped by SIGTERM" in last["message"]


# --------------------------------------------------------------------------- 5: 16-bit images
def test_16_bit_grey_png_is_scaled_not_clamped_to_white(tmp_path):
    values = np.array([[0, 30000], [65535, 257 * 100]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit greyscale PNG
    rgb = np.asarray(load_rgb(str(path)))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 117], [255, 100]]


# --------------------------------------------------------------------------- 6, 9: specs
def test_yaml_alias_bomb_and_huge_lists_are_refused_quickly(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\n")  # 10^9 values once expanded
    (tmp_path / "long.yaml").write_text("train:\n  optim:\n    lr_steps: [" + ", ".join(["1"] * 50000) + "]\n")
    for name in ("bomb", "long"):
        with pytest.raises(ConfigError, match="expands to more than"):
            load_config(str(tmp_path / f"{name}.yaml"))


def test_unresolvable_interpolation_in_a_spec_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("REID_TEST_UNSET", raising=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  backbone: ${oc.env:REID_TEST_UNSET}\n")
    with pytest.raises(ConfigError, match=r"invalid value for model\.backbone in .*REID_TEST_UNSET"):
        load_config(str(spec))


def test_hash_inside_a_list_file_path_is_part_of_the_path(tmp_path):
    (tmp_path / "imgs").mkdir()
    write_person(tmp_path / "imgs" / "0001_c1s1_#1.jpg", 1, 1, 0)
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment line\nimgs/0001_c1s1_#1.jpg 1 1  # a trailing comment\n")
    (entry,) = parse_list_file(str(listing), "dataset.train_dataset_dir")
    assert entry.path.endswith("imgs/0001_c1s1_#1.jpg") and (entry.pid, entry.camid) == (1, 1)


# --------------------------------------------------------------------------- 7, 8: results folder
@pytest.mark.parametrize("field", ["results_dir", "evaluate.results_dir"])
def test_a_results_folder_that_is_a_file_is_one_line(field, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    results = [f"results_dir={blocker if field == 'results_dir' else tmp_path}"]
    if field != "results_dir":
        results.append(f"{field}={blocker}")
    checkpoint = tmp_path / "model.pth"  # exists (the path check passes); the results folder fails first
    checkpoint.write_bytes(b"")
    code = main(["evaluate", *results, f"evaluate.checkpoint={checkpoint}"])
    assert code == 2 and "cannot create the results folder" in one_line(capsys)


def test_a_full_disk_for_status_json_is_one_line(tiny_market, tmp_path, capsys, monkeypatch):
    from reid_tao.io import atomic

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "_append", full)
    code = main(["train", *tiny_overrides(tiny_market, tmp_path)])
    err = one_line(capsys)
    assert code == 1 and "status.json" in err and "No space left on device" in err


def test_a_second_run_in_the_same_results_folder_names_the_first_ones_pid(tiny_market, tmp_path, capsys):
    folder = tmp_path / "train"
    folder.mkdir()
    with results_lock(folder, "train"):  # as a first `reid train` holds it
        code = main(["train", *tiny_overrides(tiny_market, tmp_path)])
    err = one_line(capsys)
    assert code == 2 and f"pid {os.getpid()}" in err and "is running in" in err
    assert not (folder / "status.json").exists()  # the first run's status.json is left alone


# --------------------------------------------------------------------------- 9: not a checkpoint
@pytest.mark.parametrize("content", [b'{"state_dict": {}}', bytes(range(7, 250)) * 10])
def test_json_or_garbage_given_as_a_checkpoint_is_not_a_checkpoint(content, tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a PyTorch checkpoint") as error:
        read_checkpoint_file(str(path), "evaluate.checkpoint")
    assert "trust_weights_file" not in str(error.value)


# --------------------------------------------------------------------------- inputs stay inside
def test_an_unlabeled_camera_folder_linked_outside_is_not_walked(tmp_path, caplog):
    """A camera folder linked to / walked the whole filesystem (and failed at /proc): links to folders are not
    followed, at the camera level (a warning names them) or below."""
    from reid_tao.data.layouts import read_unlabeled

    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    for index in range(2):
        write_person(outside / f"secret_{index}.jpg", 7, 1, index)
        write_person(outside / "deeper" / f"secret_{index}.jpg", 7, 1, index)
    root = tmp_path / "unlabeled"
    (root / "cam1").mkdir(parents=True)
    write_person(root / "cam1" / "a.jpg", 1, 1, 0)
    (root / "cam1" / "more").symlink_to(outside / "deeper")
    (root / "cam2").symlink_to(outside)
    with caplog.at_level("WARNING", logger="reid_tao"):
        records = read_unlabeled(str(root), "dataset.train_dataset_dir")
    assert [(Path(r.path).relative_to(root).as_posix(), r.camid) for r in records] == [("cam1/a.jpg", 1)]
    assert any("cam2 is a link to a folder, not followed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- ONNX sidecar and graph
def tiny_graph(path: Path, extra_nodes=(), extra_inits=(), output="m", dims=("batch", 3, 8, 4), **sidecar) -> Path:
    """A graph (N, 3, 8, 4) -> (N, 3) (the mean of each channel), with its sidecar; ``extra_nodes`` may feed the
    output through ``output``."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        *extra_nodes,
        helper.make_node("Identity", [output], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        list(extra_inits),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    meta = {
        "input_name": "x",
        "output_name": "y",
        "feature_dim": 3,
        "input_size": [8, 4],
        "pixel_mean": [0.5, 0.5, 0.5],
        "pixel_std": [0.25, 0.25, 0.25],
        **sidecar,
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_an_onnx_sidecar_that_is_a_fifo_is_one_line_not_a_hang(tmp_path):
    model = tiny_graph(tmp_path / "model.onnx")
    model.with_suffix(".json").unlink()
    os.mkfifo(model.with_suffix(".json"))

    def stop(signum, frame):
        raise TimeoutError("the sidecar read blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(30)
    try:
        with pytest.raises(DataError, match=r"model.json cannot be read \(it is a FIFO \(named pipe\)"):
            OnnxModel(model, "inference.checkpoint", "cpu")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"input_size": [60000, 60000]}, "input size [60000, 60000] or feature_dim 3 out of bounds"),
        ({"feature_dim": 10**12}, "feature_dim 1000000000000 out of bounds"),
        ({"pixel_std": [1e-320, 1e-320, 1e-320]}, "std >= 1e-06"),  # > 0, but 0 in float32
        ({"pixel_mean": [float("nan"), 0.5, 0.5]}, "3 finite values"),
        ({"padding": "x" * 2**20}, "over 1048576 bytes"),
    ],
)
def test_an_onnx_sidecar_out_of_bounds_is_one_line(tmp_path, change, says):
    # the graph's height and width are free, so only the sidecar's bound stops a 60000 x 60000 resize
    model = tiny_graph(tmp_path / "model.onnx", dims=("batch", 3, "height", "width"), **change)
    with pytest.raises(DataError, match="model.json") as raised:
        OnnxModel(model, "inference.checkpoint", "cpu")
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_an_onnx_graph_that_needs_a_huge_tensor_is_refused_before_it_runs(tmp_path):
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([2**21, 2**20], np.int64), "shape")  # 8 TiB of float32
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.array([1.0], np.float32))
        ),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["m", "total"], ["sum"]),
    ]
    model = tiny_graph(tmp_path / "model.onnx", nodes, [shape], output="sum")
    with pytest.raises(DataError, match=r"its tensor 'big' needs 8192.0 GiB for one image \(at most 4 GiB\)"):
        OnnxModel(model, "inference.checkpoint", "cpu")


def test_an_onnx_graph_that_fails_while_running_is_one_line(tiny_market, tmp_path, capfd):
    """A failure that shapes do not show (here a reshape that cannot fit; a run-time allocation the machine
    refuses is reported the same way) is one line, without onnxruntime's own log line."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, 7], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["m", "shape"], ["odd"])]
    model = tiny_graph(tmp_path / "model.onnx", nodes, [shape], output="odd")
    capfd.readouterr()
    code = main(
        [
            "inference",
            f"results_dir={tmp_path}",
            f"inference.checkpoint={model}",
            f"inference.query_dataset={tiny_market / 'query'}",
            "inference.accelerator=cpu",
            "dataset.num_workers=0",
        ]
    )
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"inference.checkpoint: onnxruntime failed running {model} on a batch of" in err
    assert not [p for p in (tmp_path / "inference").iterdir() if p.name.startswith(".inference.json")]


def test_a_spec_pixel_std_that_is_zero_in_float32_is_one_line(tiny_market, tmp_path, capsys):
    code = main(["train", *tiny_overrides(tiny_market, tmp_path), "dataset.pixel_std=[1e-320,1e-320,1e-320]"])
    assert code == 2 and "dataset.pixel_std values must be >= 1e-06" in one_line(capsys)
