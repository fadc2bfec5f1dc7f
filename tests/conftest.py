"""Shared fixtures (helpers live in helpers.py) and the ``gpu`` marker's skip on machines without CUDA."""
import shutil
from pathlib import Path

import pytest

from helpers import make_market


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


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    return make_market(tmp_path_factory.mktemp("market"))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    """A folder for one test module's shared (module-scoped) fixtures, removed when the module is done: a
    trained fixture's checkpoints are ~135 MB each, and a full run must leave little behind."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)
