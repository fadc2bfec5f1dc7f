"""Multi-process training and evaluation on the CPU (gloo): DDP through Lightning and torchrun.

These spawn real processes, so they are few and small."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REID, SUPPORT, tiny_overrides

pytestmark = pytest.mark.slow  # real processes

TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reid(*args, env=None, check=True):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([*REID, *args], capture_output=True, text=True, timeout=TIMEOUT, env=environment)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tiny_market, module_tmp):
    results = module_tmp / "ddp"
    results.mkdir()
    args = tiny_overrides(
        tiny_market,
        results,
        **{
            "train.num_gpus": 2,
            "train.num_epochs": 2,
            "dataset.batch_size": 4,
            "model.with_center_loss": True,
            "train.checkpoint_interval": 1,
        },
    )
    first = reid("train", *args)
    return results, args, first


def test_two_process_training_writes_one_set_of_checkpoints(ddp_run):
    results, _, first = ddp_run
    assert "devices: 2 x cpu" in first.stdout and "global batch 8" in first.stdout
    names = sorted(p.name for p in (results / "train").glob("*.pth"))
    assert names == ["model_epoch_000.pth", "model_epoch_001.pth", "reid_model_latest.pth"]
    summaries = [line for line in first.stdout.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 2  # one line per epoch, from rank 0 only
    assert "val (plain) mAP" in summaries[-1]
    checkpoint = torch.load(results / "train" / "reid_model_latest.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and "loss.center_loss.centers" in checkpoint["state_dict"]


def test_two_process_training_resumes(ddp_run):
    results, args, _ = ddp_run
    again = reid("train", *args, "train.num_epochs=3")
    assert "resuming from" in again.stdout
    assert torch.load(results / "train" / "reid_model_latest.pth", weights_only=True)["epoch"] == 2


def test_sharded_evaluation_equals_single_process(ddp_run, tiny_market, tmp_path):
    results, _, _ = ddp_run
    checkpoint = results / "train" / "model_epoch_001.pth"
    common = [
        f"evaluate.checkpoint={checkpoint}",
        f"dataset.query_dataset_dir={tiny_market / 'query'}",
        f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
        "dataset.val_batch_size=4",
        "dataset.num_workers=0",
        "evaluate.accelerator=cpu",
        "re_ranking.re_ranking=true",
        "re_ranking.k1=4",
        "re_ranking.k2=2",
    ]
    from reid_tao.cli import main

    assert main(["evaluate", *common, f"results_dir={tmp_path / 'one'}"]) == 0  # one process: this one
    reid("evaluate", *common, f"results_dir={tmp_path / 'two'}", "evaluate.num_gpus=2")
    one = json.loads((tmp_path / "one" / "evaluate" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "evaluate" / "metrics.json").read_text())
    assert one.keys() == two.keys()
    for key in ("mAP", "mINP", "rank1", "num_query", "num_gallery", "num_valid_query"):
        assert one[key] == pytest.approx(two[key], abs=1e-6), key
    assert one["ranking"] == "re-ranked" and one["plain"]["mAP"] == pytest.approx(two["plain"]["mAP"], abs=1e-6)


def test_sharded_inference_writes_one_complete_json(ddp_run, tiny_market, tmp_path):
    results, _, _ = ddp_run
    output = tmp_path / "emb.json"
    reid(
        "inference",
        f"inference.checkpoint={results / 'train' / 'reid_model_latest.pth'}",
        f"inference.test_dataset={tiny_market / 'bounding_box_test'}",
        f"inference.output_file={output}",
        "inference.accelerator=cpu",
        "inference.num_gpus=2",
        "dataset.val_batch_size=4",
        "dataset.num_workers=0",
        f"results_dir={tmp_path}",
    )
    entries = json.loads(output.read_text())
    expected = sorted(str(p) for p in (tiny_market / "bounding_box_test").iterdir())
    assert [e["img_path"] for e in entries] == expected


def test_two_nodes_with_torchrun_over_loopback(tiny_market, tmp_path):
    port = str(free_port())
    args = tiny_overrides(
        tiny_market,
        tmp_path,
        **{"train.num_nodes": 2, "train.num_epochs": 1, "dataset.batch_size": 4, "train.checkpoint_interval": 1},
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            REID[1],
            "train",
            *args,
        ]
        nodes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        )
    outputs = [node.communicate(timeout=TIMEOUT)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 node(s)" in outputs[0] and "global batch 8" in outputs[0]
    assert sorted(p.name for p in (tmp_path / "train").glob("*.pth")) == [
        "model_epoch_000.pth",
        "reid_model_latest.pth",
    ]


# -- validation metrics split over ranks, and ranks with nothing to extract -------------------------------------
ROOT = Path(__file__).resolve().parents[1]
HANG_TIMEOUT = 240  # a rank stuck in a collective fails the test instead of blocking the suite


def run_or_kill(command, timeout=HANG_TIMEOUT):
    """Run ``command`` in its own process group; on timeout kill the group (launched ranks included) and fail."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True
    )
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail(f"{command[1:3]} did not finish in {timeout} s (a rank waiting in a collective?)\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def validate_in_processes(out_dir: Path, devices: int, overrides) -> list:
    run_or_kill([sys.executable, str(SUPPORT / "ddp_validation.py"), str(out_dir), str(devices), *overrides])
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(devices)]


@pytest.fixture(scope="module")
def ddp_training_run(tiny_market, module_tmp):
    """One 2-process launch of tests/support/ddp_training.py: a `reid train`-like run validating under DDP, then
    the validation of an untrained model over the same two ranks. Returns its folder and overrides."""
    out = module_tmp / "ddp_training"
    args = tiny_overrides(
        tiny_market, out / "r", **{"train.num_gpus": 2, "dataset.batch_size": 4, "train.checkpoint_interval": 100}
    )
    out.mkdir()
    run_or_kill([sys.executable, str(SUPPORT / "ddp_training.py"), str(out), *args])
    return out, args


def test_validation_splits_queries_over_ranks_and_equals_one_process(ddp_training_run):
    from ddp_validation import validate

    out, overrides = ddp_training_run
    single = validate(overrides, devices=1)
    num_query, num_gallery = 4, 17  # tiny_market: query, bounding_box_test without the junk image
    assert single["shapes"] == [[num_query, num_gallery]]
    ranks = [json.loads((out / f"validate_rank{rank}.json").read_text()) for rank in range(2)]
    # each rank ranks only its half of the queries; nobody builds the full 4 x 17 matrix
    assert [r["shapes"] for r in ranks] == [[[2, num_gallery]], [[2, num_gallery]]]
    for result in ranks:
        assert result["metrics"].keys() == single["metrics"].keys() and "mAP" in single["metrics"]
        for name, value in single["metrics"].items():
            assert result["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_validation_with_fewer_images_than_processes_finishes(tiny_market, tmp_path):
    """2 images over 3 processes: rank 0's shard is empty, and ranks 0 and 1 have no query."""
    query, gallery = tmp_path / "query", tmp_path / "gallery"
    query.mkdir(), gallery.mkdir()
    shutil.copy(tiny_market / "query" / "0101_c1s1_000000_00.jpg", query)
    shutil.copy(tiny_market / "bounding_box_test" / "0101_c2s1_000001_00.jpg", gallery)
    overrides = tiny_overrides(
        tiny_market, tmp_path, **{"dataset.query_dataset_dir": query, "dataset.test_dataset_dir": gallery}
    )
    ranks = validate_in_processes(tmp_path, 3, overrides)
    assert [r["shapes"] for r in ranks] == [[], [], [[1, 1]]]
    assert all(r["metrics"]["mAP"] == 1.0 and r["metrics"]["cmc_rank_1"] == 1.0 for r in ranks)


def test_two_process_inference_on_one_image_finishes(tiny_market, tmp_path):
    """Rank 1 has no image of its own: it must still run the loop and join the gather."""
    from helpers import write_untrained_checkpoint

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "untrained.pth")
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(tiny_market / "query" / "0101_c1s1_000000_00.jpg", folder)
    output = tmp_path / "emb.json"
    run_or_kill(
        [
            *REID,
            "inference",
            f"inference.checkpoint={checkpoint}",
            f"inference.test_dataset={folder}",
            f"inference.output_file={output}",
            "inference.accelerator=cpu",
            "inference.num_gpus=2",
            "dataset.num_workers=0",
            f"results_dir={tmp_path}",
        ]
    )
    entries = json.loads(output.read_text())
    assert [e["img_path"] for e in entries] == [str(folder / "0101_c1s1_000000_00.jpg")]
    assert len(entries[0]["embedding"]) == 32


def test_every_sampler_and_loss_combination_trains_under_ddp(tiny_market, tmp_path):
    """Two steps per combination: a parameter left without a gradient (the classifier without ID loss)
    fails DDP at the second step."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        str(SUPPORT / "ddp_loss_combinations.py"),
        str(tiny_market),
        str(tmp_path),
    ]
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trained = [line for line in result.stdout.splitlines() if line.startswith("trained ")]
    assert len(trained) == 8, result.stdout  # 3 samplers x 3 metric losses, less triplet + center


def test_training_under_ddp_logs_what_one_process_evaluates_and_syncs_rarely(ddp_training_run, tiny_market, tmp_path):
    """One 2-process `reid train`-like run that validates under DDP:
    the logged validation mAP is `reid evaluate`'s of the saved checkpoint (BatchNorm statistics broadcast
    from rank 0 before validating), train_loss is the mean over both ranks, and the steps sync with the host
    only where counted for (the preemption flag every check_every steps, nothing in the loss)."""
    from reid_tao.cli import main

    out, _ = ddp_training_run
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    logged = ranks[0]["metrics"]
    # every epoch value is the same on both ranks; train_loss_step is each process's own step (never synced)
    assert {k: v for k, v in ranks[1]["metrics"].items() if k != "train_loss_step"} == pytest.approx(
        {k: v for k, v in logged.items() if k != "train_loss_step"}
    )
    # the epoch mean over both ranks (equal batch sizes), not rank 0's alone
    own = [r["own_last_epoch_loss"] for r in ranks]
    assert abs(own[0] - own[1]) > 1e-3  # the ranks saw different data, so rank 0 alone would differ
    assert logged["train_loss"] == pytest.approx(sum(own) / 2, rel=1e-5)
    # validation under DDP equals a single-process evaluate of the checkpoint written at the end
    checkpoint = out / "r" / "train" / "reid_model_latest.pth"
    assert (
        main(
            [
                "evaluate",
                f"evaluate.checkpoint={checkpoint}",
                f"results_dir={tmp_path / 'eval'}",
                f"dataset.query_dataset_dir={tiny_market / 'query'}",
                "evaluate.accelerator=cpu",
                f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
                "dataset.num_workers=0",
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "eval" / "evaluate" / "metrics.json").read_text())
    assert logged["mAP"] == pytest.approx(evaluated["mAP"], abs=1e-5)
    assert logged["cmc_rank_1"] == pytest.approx(evaluated["rank1"], abs=1e-5)
    # host reads over the real training steps, by the reid_tao file that caused them
    for rank in ranks:
        sources, steps = rank["syncs_by_source"], rank["steps"]
        assert steps >= 8 and rank["epochs"] == 2
        # every check_every steps, after each epoch's last batch, and at each later epoch's start (a signal
        # during validation or the epoch-end checkpoint write)
        agreements = steps // rank["check_every"] + rank["epochs"] + (rank["epochs"] - 1)
        assert sources.get("engine/preemption.py", 0) <= agreements, sources
        assert not any(source.startswith("model/") for source in sources), sources
