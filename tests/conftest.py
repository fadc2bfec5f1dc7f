"""Shared fixtures (helpers live in helpers.py), the test-only backbone, the ``gpu`` marker's skip on machines
without CUDA, and the whole suite on two pytest-xdist workers."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import tiny_backbone

from helpers import make_market, tiny_overrides

# One entry in the backbone table, as docs/contributing.md describes: tiny_overrides trains it instead of resnet_18.
tiny_backbone.register()

WORKERS = 2  # the whole suite's xdist workers: most slow tests wait on one-core work (a subprocess importing torch)
if os.environ.get("PYTEST_XDIST_WORKER"):  # share the cores between the workers, their subprocesses included
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", WORKERS))))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The whole suite (no paths named: the README's and CI's `python -m pytest -q`, with or without -m) runs on
    WORKERS pytest-xdist workers, a file at a time (a module's shared fixtures are built once); a run of named
    files or tests stays in one process. -n N decides otherwise; without pytest-xdist everything runs in one."""
    if (
        not config.pluginmanager.hasplugin("xdist")
        or hasattr(config, "workerinput")  # (a worker itself)
        or config.option.numprocesses is not None
        or config.option.usepdb
        or config.option.collectonly
    ):
        return
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.option.numprocesses = WORKERS
        if config.option.dist == "no":
            config.option.dist = "loadfile"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skip them (not deselect) when it is absent. On xdist workers, the files with
    slow tests go first (in name order, each file's tests in theirs): the quick files then fill both workers at the
    end, instead of one worker finishing a long file alone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
        items.sort(key=lambda item: item.path not in slow_files)  # (stable)
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture
def production_tables(monkeypatch):
    """The tables without the test-only entries, for tests of what is generated from them (help, docs)."""
    from reid_tao.model.backbones import BACKBONES

    monkeypatch.delitem(BACKBONES, tiny_backbone.NAME)


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    return make_market(tmp_path_factory.mktemp("market"))


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_market, tmp_path_factory):
    """One tiny 1-epoch checkpoint (tiny_overrides: the test-only backbone, 32x16 input, 32-d, 6 classes) for every
    test that needs "some trained checkpoint". Read it only: a test that changes it copies it to its tmp_path."""
    from reid_tao.cli import main

    results = tmp_path_factory.mktemp("trained")
    assert main(["train"] + tiny_overrides(tiny_market, results, **{"train.num_epochs": 1})) == 0
    checkpoint = results / "train" / "reid_model_latest.pth"

    def state():
        return hashlib.sha256(checkpoint.read_bytes()).hexdigest(), sorted(map(str, results.rglob("*")))

    before = state()
    yield checkpoint
    # shared by many tests: one that changed it, or wrote next to it, would make the others depend on the order
    assert state() == before, "a test changed trained_checkpoint or wrote next to it: copy it to tmp_path first"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    """A folder for one test module's shared (module-scoped) fixtures, removed when the module is done: a run with
    a real backbone writes checkpoints of ~135 MB (resnet_18), and a full run must leave little behind."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)
