"""Shared fixtures (helpers live in helpers.py), the test-only backbone and the ``gpu`` marker's skip on machines
without CUDA."""
import hashlib
import shutil
from pathlib import Path

import pytest
import tiny_backbone

from helpers import make_market, tiny_overrides

# One entry in the backbone table, as docs/contributing.md describes: tiny_overrides trains it instead of resnet_18.
tiny_backbone.register()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skip them (not deselect) when it is absent."""
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
