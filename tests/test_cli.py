"""The `reid` command line: help, task dispatch and error formatting."""
import subprocess
import sys

import pytest

from reid_tao.cli import main
from reid_tao.io import error_line
from reid_tao.errors import DataError


def test_top_level_help_lists_tasks(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for task in ("train", "evaluate", "inference", "export"):
        assert f"  {task}" in out


def test_task_help_lists_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "model.backbone = 'resnet_50'" in out and "train.optim.base_lr = 0.00035" in out
    assert out.count("results_dir = 'results'") == 1


def test_unknown_task(capsys):
    assert main(["fly"]) == 2
    assert "unknown task 'fly'" in capsys.readouterr().err


def test_errors_from_loader_workers_are_cut_to_their_last_line():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1\nreid_tao.errors.DataError: cannot read image /a.jpg; remove it')
    assert error_line(wrapped) == "cannot read image /a.jpg; remove it"


def test_console_entry_point_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "reid_tao", "train", "model.backbon=resnet_50"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("reid train: error: unknown field model.backbon in override "
                                     "'model.backbon=resnet_50'; did you mean model.backbone?")
