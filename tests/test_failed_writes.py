"""A failed write gives one line naming the file and the OS's reason, a non-zero exit, no
temporary file, and leaves the previous file untouched; the next run resumes from it."""

import os
import resource
import signal
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from reid_tao.cli import main
from reid_tao.errors import WriteError
from reid_tao.io import atomic_torch_save, atomic_write_json

from helpers import REID, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# bytes: far below a tiny_overrides checkpoint (~340 KB), far above every other file a run writes (<= ~5 KB)
LIMIT = 64 * 2**10


def _limit_file_size():
    """preexec_fn: writes past LIMIT fail with EFBIG ("File too large"), as on a full disk, instead of SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@contextmanager
def file_size_limit(limit: int):
    """The same limit in this process, restored afterwards (a soft limit can be raised again)."""
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)


def leftovers(folder: Path) -> list:
    return [p.name for p in folder.rglob(".*tmp*")]


def test_torch_save_past_the_file_size_limit_is_one_write_error(tmp_path):
    target = tmp_path / "reid_model_latest.pth"
    atomic_torch_save({"a": torch.ones(1)}, target)
    before = target.read_bytes()
    with file_size_limit(2**20), pytest.raises(WriteError) as raised:
        atomic_torch_save({"a": torch.zeros(2**20)}, target)  # 4 MB
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and str(target) in message and "File too large" in message
    assert target.read_bytes() == before and not leftovers(tmp_path)


def test_folder_in_the_way_is_one_write_error(tmp_path):
    (tmp_path / "not_a_folder").write_text("")
    with pytest.raises(WriteError, match=r"cannot write .*not_a_folder/metrics.json \(Not a directory\)"):
        atomic_write_json(tmp_path / "not_a_folder" / "metrics.json", {"mAP": 1.0})


def test_other_runtime_errors_are_not_disguised_as_write_errors(tmp_path):
    class Broken:
        def __reduce__(self):
            raise RuntimeError("not picklable")

    with pytest.raises(RuntimeError, match="not picklable"):
        atomic_torch_save({"a": Broken()}, tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_checkpoint_past_the_file_size_limit_keeps_the_previous_latest(tiny_market, tmp_path, capsys):
    overrides = tiny_overrides(tiny_market, tmp_path / "r", **{"train.num_epochs": 1})
    assert main(["train"] + overrides) == 0
    latest = tmp_path / "r/train/reid_model_latest.pth"
    before = latest.read_bytes()
    assert len(before) > LIMIT

    more = tiny_overrides(tiny_market, tmp_path / "r", **{"train.num_epochs": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [*REID, "train", *more],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        preexec_fn=_limit_file_size,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("reid train:")]
    assert len(ours) == 1 and "File too large" in ours[0] and ".pth" in ours[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert latest.read_bytes() == before and not leftovers(tmp_path / "r")

    capsys.readouterr()
    assert main(["train"] + more) == 0  # without the limit: resumes from the intact latest and finishes
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(latest, weights_only=True)["epoch"] == 1


@pytest.fixture
def trained(trained_checkpoint) -> Path:
    return trained_checkpoint


def _in_the_way(path: Path) -> Path:
    """A folder where the output file should go: renaming the finished file onto it fails."""
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    "task, output",
    [
        ("evaluate", "metrics.json"),
        ("evaluate", "cmc_curve.png"),
        ("inference", "inference.json"),
        pytest.param("export", "model.onnx", marks=pytest.mark.slow),
    ],
)
def test_task_output_that_cannot_be_written_is_one_line(task, output, trained, tiny_market, tmp_path, capsys):
    results = tmp_path / "res"
    target = _in_the_way(results / task / output)
    overrides = tiny_overrides(tiny_market, results) + [f"{task}.checkpoint={trained}"]
    if task == "inference":
        overrides += [f"inference.query_dataset={tiny_market / 'query'}"]
    if task == "export":
        overrides += [f"export.onnx_file={target}", "export.overwrite=true"]
    capsys.readouterr()
    code = main([task] + overrides)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot write {target} (Is a directory)" in err
    assert target.is_dir() and not leftovers(results)


# --------------------------------------------------------------------------- a device named as an output
@pytest.mark.parametrize(
    "task, output",
    [
        ("evaluate", "metrics.json"),
        ("evaluate", "cmc_curve.png"),
        ("inference", "inference.json"),
        ("inference", "status.json"),
        ("inference", "inference.log"),
        pytest.param("export", "model.onnx", marks=pytest.mark.slow),
    ],
)
def test_a_task_output_that_is_a_fifo_is_refused_not_replaced(task, output, trained, tiny_market, tmp_path, capsys):
    """A FIFO stands for /dev/null, /dev/full or any device node (the tests never name a real one: as root, the
    rename would replace it). status.json and the log are appended to: a reader is kept open so that, without the
    check, the task would write into the FIFO rather than wait for one."""
    results = tmp_path / "res"
    (results / task).mkdir(parents=True)
    target = results / task / output
    os.mkfifo(target)
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    overrides = tiny_overrides(tiny_market, results) + [f"{task}.checkpoint={trained}"]
    if task == "inference":
        overrides += [f"inference.query_dataset={tiny_market / 'query'}"]
    if task == "export":
        overrides += [f"export.onnx_file={target}", "export.overwrite=true"]
    capsys.readouterr()
    try:
        code = main([task] + overrides)
        assert os.read(reader, 100) == b""  # nothing was written into it
    finally:
        os.close(reader)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot write {target}: it is a FIFO (named pipe), not a regular file" in err
    assert stat.S_ISFIFO(target.lstat().st_mode) and not leftovers(results)
