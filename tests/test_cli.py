"""The `reid` command line: help, task dispatch and error formatting."""

import subprocess
import sys

import pytest

from reid_tao.cli import main
from reid_tao.errors import DataError
from reid_tao.io import error_line

from helpers import write_person


def test_top_level_help_lists_tasks(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for task in ("train", "evaluate", "inference", "export"):
        assert f"  {task}" in out


def test_task_help_lists_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])  # the sections and their fields' names
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "  model " in out and "backbone, last_stride" in out
    assert "`reid train --help SECTION`" in " ".join(out.split())  # (wrapped to the terminal)
    assert main(["train", "--help", "all"]) == 0  # every field with its default
    out = capsys.readouterr().out
    assert "model.backbone = 'resnet_50'" in out and "train.optim.base_lr = 0.00035" in out
    assert out.count("results_dir = 'results'") == 1


def test_unknown_task(capsys):
    assert main(["fly"]) == 2
    assert "unknown task 'fly'" in capsys.readouterr().err


def test_errors_from_loader_workers_are_cut_to_their_last_line():
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1\nreid_tao.errors.DataError: cannot read image /a.jpg; remove it'
    )
    assert error_line(wrapped) == "cannot read image /a.jpg; remove it"


def test_console_entry_point_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "reid_tao", "train", "model.backbon=resnet_50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "reid train: error: unknown field model.backbon in override "
        "'model.backbon=resnet_50'; did you mean model.backbone?"
    )


# Runs the CLI in a fresh interpreter and reports, at the error, whether torch was imported.
_TORCH_PROBE = (
    "import sys; from reid_tao.cli import main; code = main(sys.argv[1:]); "
    "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
)


@pytest.mark.parametrize(
    "argv",
    [["train", "-e", "missing.yaml"], ["evaluate", "model.backbon=resnet_18"], ["train", "train.optim.base_lr=-1"]],
)
def test_spec_errors_answer_before_torch_is_imported(argv, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "torch not imported" in result.stdout


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  backbone: resnet_18\n  input_width: [1, 2\ndataset:\n  batch_size: 4\n")
    assert main(["train", "-e", str(spec)]) != 0
    # the line of the unclosed bracket, not the line where PyYAML noticed it
    assert "line 3, column 16: did not find expected ',' or ']' at line 4" in capsys.readouterr().err


def test_empty_results_dir_asks_for_it_as_tao_does(capsys):
    # TAO 7.3's own experiment.yaml has results_dir: '' (its launcher fills it in)
    assert main(["train", "-e", "tests/data/tao73_experiment.yaml"]) != 0
    assert "results_dir is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, field",
    [
        (["train", "dataset.train_dataset_dir=/no/such/folder"], "dataset.train_dataset_dir"),
        (["evaluate", "evaluate.checkpoint=/no/such.pth"], "evaluate.checkpoint"),
        (["inference", "inference.checkpoint=/no/such.pth"], "inference.checkpoint"),
        (["export", "export.checkpoint=/no/such.pth"], "export.checkpoint"),
    ],
)
def test_missing_paths_answer_before_torch_is_imported(argv, field, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE, *argv, f"results_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2 and f"error: {field}: " in result.stderr and "does not exist" in result.stderr
    assert "torch not imported" in result.stdout


def test_a_finished_multi_process_task_destroys_its_process_group(monkeypatch, tmp_path):
    """Left to the interpreter's exit, gloo's threads sometimes abort the process after its outputs were written."""
    import torch.distributed as dist

    class OneProcessGroupTask:
        @staticmethod
        def run(config):
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")
    images = tmp_path / "images"
    images.mkdir()
    write_person(images / "0001_c1s1_000000_00.jpg", 1, 1, 0)  # (a folder without images is refused before run)
    monkeypatch.setitem(sys.modules, "reid_tao.tasks.inference", OneProcessGroupTask)
    try:
        assert (
            main(
                [
                    "inference",
                    f"results_dir={tmp_path}",
                    f"inference.checkpoint={checkpoint}",
                    f"inference.test_dataset={images}",
                ]
            )
            == 0
        )
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
