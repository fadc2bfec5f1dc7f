"""reid_tao.io: atomic writes (file modes follow the umask, failures leave the old file) and first_line."""

import json
import os
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from reid_tao import io
from reid_tao.cli import main
from reid_tao.errors import WriteError

from helpers import tiny_overrides


@contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path, *keep: str) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def write_figure(path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    return io.atomic_save_figure(figure, path, dpi=20)


def write_with_path(path: Path) -> Path:
    with io.atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:  # what a third-party writer taking a file name does
            handle.write(b"onnx")
    return path


def write_with_path_replacing_the_file(path: Path) -> Path:
    """A writer that puts its own mkstemp (0600) file in place of ours: the mode is still the umask's."""
    with io.atomic_path(path) as temporary:
        handle, own = tempfile.mkstemp(dir=temporary.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(b"data")
        os.replace(own, temporary)
    return path


def write_streamed(path: Path) -> Path:
    with io.atomic_output(path) as handle:
        for index in range(3):
            handle.write(f"{index}\n")
    return path


WRITERS = {
    "text": lambda path: io.atomic_write_text(path, "hello\n"),
    "json": lambda path: io.atomic_write_json(path, {"a": [1, 2]}),
    "torch": lambda path: io.atomic_torch_save({"a": torch.ones(2)}, path),
    "figure": write_figure,
    "path": write_with_path,
    "path_replaced": write_with_path_replacing_the_file,
    "output": write_streamed,
    "output_binary": lambda path: _write_binary(path),
    "bytes": lambda path: io.atomic_write_bytes(path, b"\xff\xd8", fsync=False),
}


def _write_binary(path: Path) -> Path:
    with io.atomic_output(path, binary=True) as handle:
        handle.write(b"\x00\x01")
    return path


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, name, mask, expected):
    target = tmp_path / "deep" / "folder" / "out.bin"  # parent folders are created
    with umask(mask):
        WRITERS[name](target)
        WRITERS[name](target)  # and when replacing an existing file
    assert target.is_file() and target.stat().st_size > 0
    assert mode_of(target) == expected
    assert leftovers(target.parent) == ["out.bin"]


def test_json_and_text_content(tmp_path):
    io.atomic_write_json(tmp_path / "a.json", {"b": 1, "c": [1, 2]})
    assert (tmp_path / "a.json").read_text() == json.dumps({"b": 1, "c": [1, 2]}, indent=2) + "\n"
    assert io.atomic_write_text(tmp_path / "t.txt", "é\n") == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    assert torch.equal(
        torch.load(io.atomic_torch_save({"x": torch.arange(3)}, tmp_path / "m.pth"))["x"], torch.arange(3)
    )


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def fail_in_output(path: Path, error: BaseException) -> None:
    with io.atomic_output(path) as handle:
        handle.write("partial")
        handle.flush()
        raise error


def fail_in_path(path: Path, error: BaseException) -> None:
    with io.atomic_path(path) as temporary:
        temporary.write_bytes(b"partial")
        raise error


def fail_in_figure(path: Path, error: BaseException) -> None:
    from matplotlib.figure import Figure

    class Broken(Figure):
        def savefig(self, handle, **kwargs):
            handle.write(b"partial")
            raise error

    io.atomic_save_figure(Broken(), path, dpi=10)


FAILING = {
    "output": fail_in_output,
    "path": fail_in_path,
    "figure": fail_in_figure,
    "torch": lambda path, error: io.atomic_torch_save({"a": Unpicklable()}, path),
}


@pytest.mark.parametrize("name", sorted(FAILING))
@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failing_writer_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, name, error):
    target = tmp_path / "target"
    io.atomic_write_text(target, "previous")
    expected = RuntimeError if name == "torch" else type(error)
    with pytest.raises(expected):
        FAILING[name](target, error)
    assert target.read_text() == "previous"
    assert leftovers(tmp_path) == ["target"]


def test_failing_writer_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        fail_in_output(tmp_path / "new.txt", ValueError("boom"))
    assert leftovers(tmp_path) == []


def test_temporary_files_are_hidden_unique_siblings(tmp_path):
    target = tmp_path / "x.onnx"
    with io.atomic_path(target) as first, io.atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".x.onnx.tmp") and first.is_file()
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer block finished last: last writer wins
    assert leftovers(tmp_path) == ["x.onnx"]


# --------------------------------------------------------------------------- a device named as an output
# These tests never name a real device as a target: the process may run as root, where renaming over /dev/null
# would replace it. A FIFO made here, and a link made here to /dev/null, stand for a device the user names.
def fifo_at(path: Path) -> Path:
    os.mkfifo(path)
    return path


def device_link_at(path: Path) -> Path:
    path.symlink_to(os.devnull)  # a rename would replace the link, never /dev/null itself
    return path


def unchanged(path: Path, kind: str) -> bool:
    if kind == "fifo":
        return stat.S_ISFIFO(path.lstat().st_mode)
    return path.is_symlink() and os.readlink(path) == os.devnull


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_an_output_never_replaces_a_fifo_or_a_device(tmp_path, name, kind):
    target = (fifo_at if kind == "fifo" else device_link_at)(tmp_path / "out.bin")
    with pytest.raises(WriteError) as raised:
        WRITERS[name](target)
    message = str(raised.value)
    says = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert "\n" not in message and f"cannot write {target}: it is {says}, not a regular file" in message
    assert unchanged(target, kind) and leftovers(tmp_path) == ["out.bin"]


def test_a_fifo_that_appears_while_the_output_is_written_is_not_replaced(tmp_path):
    target = tmp_path / "inference.json"
    with pytest.raises(WriteError, match="FIFO"):
        with io.atomic_output(target) as handle:
            handle.write("[]")
            fifo_at(target)  # checked again just before the rename
    assert unchanged(target, "fifo") and leftovers(tmp_path) == ["inference.json"]


def test_the_device_decision_reads_only_the_node():
    assert io.not_a_regular_file(os.devnull) == "a character device"
    with pytest.raises(WriteError, match="character device"):
        io.check_output_target(os.devnull)  # raises before any file is created or renamed
    for path in ("/dev/stdout", "/dev/new_file", "/proc/self/new_file"):  # /dev/stdout may lead to a regular file
        with pytest.raises(WriteError, match="is a system folder"):
            io.check_output_target(path)
    io.check_output_target("/dev/shm/reid_results/metrics.json")  # a tmpfs for scratch outputs, not a device
    assert io.not_a_regular_file(__file__) is None and io.not_a_regular_file("/no/such/file") is None


def test_appending_to_a_fifo_or_a_device_is_refused_not_blocked(tmp_path):
    fifo = fifo_at(tmp_path / "status.json")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a writer's open returns (and would write)
    try:
        with pytest.raises(WriteError, match="FIFO"):
            io.append_line(fifo, '{"status": "STARTED"}')
        with pytest.raises(WriteError, match="FIFO"):
            io.open_append(fifo)
        assert os.read(reader, 100) == b""  # nothing was written into it
    finally:
        os.close(reader)
    with pytest.raises(WriteError, match="character device"):
        io.append_line(device_link_at(tmp_path / "log"), "line")


def test_reading_a_fifo_or_a_folder_is_refused_not_blocked(tmp_path):
    with pytest.raises(io.NotARegularFile, match="FIFO"):
        io.read_regular_file(fifo_at(tmp_path / "model.json"))
    with pytest.raises(io.NotARegularFile, match="folder"):
        io.read_regular_file(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(OSError, match="over 10 bytes"):
        io.read_regular_file(tmp_path / "big", max_bytes=10)
    assert io.read_regular_file(tmp_path / "big", max_bytes=11) == b"x" * 11


@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o077, 0o700)])
def test_staging_dir_mode_and_cleanup(tmp_path, mask, expected):
    target = tmp_path / "dataset"
    with umask(mask):
        with io.staging_dir(target) as staging:
            assert mode_of(staging) == expected and staging.parent == tmp_path
            (staging / "file").write_text("x")
            os.rename(staging, target)
    assert (target / "file").read_text() == "x" and leftovers(tmp_path) == ["dataset"]

    with pytest.raises(RuntimeError):
        with io.staging_dir(tmp_path / "other") as staging:
            (staging / "file").write_text("x")
            raise RuntimeError("interrupted")
    with io.staging_dir(tmp_path / "unused"):
        pass  # not moved into place: removed as well
    assert leftovers(tmp_path) == ["dataset"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (ValueError("first\nsecond"), "first"),
        (ValueError("\n\n   indented first  \nsecond"), "indented first"),
        (ValueError(""), "ValueError"),
        (KeyError(), "KeyError"),
        (RuntimeError("   \n  "), "RuntimeError"),
        ("text\nmore", "text"),
        ("", ""),
    ],
)
def test_first_line(value, expected):
    assert io.first_line(value) == expected


def test_first_line_limit_and_last_line():
    assert io.first_line(ValueError("abcdefghij"), limit=10) == "abcdefghij"
    assert io.first_line(ValueError("abcdefghijk"), limit=10) == "abcdefg..."
    assert len(io.first_line("x" * 500, limit=160)) == 160
    wrapped = "Caught DataError in worker.\nTraceback:\n  File x\nreid_tao.errors.DataError: bad image\n\n"
    assert io.last_line(wrapped) == "reid_tao.errors.DataError: bad image"
    assert io.last_line(ValueError()) == "ValueError"


def test_importing_io_stays_cheap():
    code = "import sys, reid_tao.io; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_every_task_output_has_normal_file_modes(tiny_market, tmp_path, capsys):
    """train, evaluate, inference and export under umask 022: every file they write is 0644."""
    results = tmp_path / "results"
    onnx_file = tmp_path / "export" / "model.onnx"
    with umask(0o022):
        assert main(["train"] + tiny_overrides(tiny_market, results)) == 0, capsys.readouterr().err
        checkpoint = results / "train" / "reid_model_latest.pth"
        common = [f"results_dir={results}", "dataset.num_workers=0"]
        assert (
            main(
                [
                    "evaluate",
                    *common,
                    f"evaluate.checkpoint={checkpoint}",
                    f"dataset.query_dataset_dir={tiny_market / 'query'}",
                    f"dataset.test_dataset_dir={tiny_market / 'bounding_box_test'}",
                ]
            )
            == 0
        ), capsys.readouterr().err
        assert (
            main(
                [
                    "inference",
                    *common,
                    f"inference.checkpoint={checkpoint}",
                    f"inference.query_dataset={tiny_market / 'query'}",
                    f"inference.test_dataset={tiny_market / 'bounding_box_test'}",
                ]
            )
            == 0
        ), capsys.readouterr().err
        assert main(["export", *common, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}"]) == 0, (
            capsys.readouterr().err
        )
    files = [path for path in results.rglob("*") if path.is_file() and not path.is_symlink()]
    files += [onnx_file, onnx_file.with_suffix(".json")]
    names = {path.name for path in files}
    assert {
        "reid_model_latest.pth",
        "experiment.yaml",
        "metrics.json",
        "cmc_curve.png",
        "model.onnx",
        "model.json",
    } <= names, sorted(names)
    assert any(path.suffix == ".json" and "inference" in path.parts for path in files), sorted(names)
    wrong = {str(path.relative_to(tmp_path)): oct(mode_of(path)) for path in files if mode_of(path) != 0o644}
    assert wrong == {}
    assert not [path for path in tmp_path.rglob(".*.tmp*")]  # no temporary file left anywhere
