"""The one reader of weights and checkpoint files (reid_tao/io/checkpoint_file.py): what it returns for each kind
of file, its one-line errors, and that no other module loads such a file itself."""

import ast
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reid_tao
from reid_tao.errors import DataError
from reid_tao.io.checkpoint_file import REID_TAO, SAFETENSORS, STATE_DICT, TAO, read_checkpoint_file

PACKAGE = Path(reid_tao.__file__).parent
# torch.load is called by safe_torch_load only, and safe_torch_load (and safetensors' load_file) by the reader only
LOADERS = {
    "torch.load": "io/safe_load.py",
    "safe_torch_load": "io/checkpoint_file.py",
    "load_file": "io/checkpoint_file.py",
}


def loads_in(source: str) -> set:
    """The LOADERS that ``source`` calls (``torch.load(...)``, ``safe_torch_load(...)``, ``x.load_file(...)``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            found.update(loader for loader in LOADERS if name == loader or name.endswith("." + loader))
    return found


def test_only_the_reader_loads_weight_files():
    others = [
        f"{path.relative_to(PACKAGE).as_posix()} calls {loader}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for loader in sorted(loads_in(path.read_text()))
        if path.relative_to(PACKAGE).as_posix() != LOADERS[loader]
    ]
    assert not others, (
        "read weights and checkpoint files with reid_tao.io.checkpoint_file.read_checkpoint_file:\n" + "\n".join(others)
    )


def test_the_loader_check_finds_a_direct_load():
    assert loads_in("import torch\nstate = torch.load(path, weights_only=True)") == {"torch.load"}
    assert loads_in("from ..io import safe_load\nx = safe_load.safe_torch_load(p, 'f')") == {"safe_torch_load"}
    assert loads_in("'''torch.load in a docstring'''\nx = torch.hub.load_state_dict_from_url(u)") == set()


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def test_a_reid_tao_checkpoint(tmp_path):
    weights, classifier = torch.ones(3), torch.zeros(4, 2)
    path = _save(
        {
            "state_dict": {
                "model.backbone.w": weights,
                "model.classifier.weight": classifier,
                "loss.centers": torch.ones(1),
            },
            "reid_tao": {"num_classes": 4},
            "optimizer_states": [],
            "epoch": 3,
        },
        tmp_path / "m.pth",
    )
    read = read_checkpoint_file(path, "evaluate.checkpoint")
    assert read.kind == REID_TAO and read.require_reid_tao() is read
    assert set(read.model_state) == {"backbone.w", "classifier.weight"}  # the network's, `model.` removed
    assert torch.equal(read.model_state["backbone.w"], weights) and "loss.centers" in read.tensors
    assert read.metadata == {"num_classes": 4} and read.holds_optimiser_state and read.contents["epoch"] == 3
    assert read.source == f"evaluate.checkpoint: {path}" and not read.encrypted


def test_a_tao_checkpoint(tmp_path):
    path = _save(
        {
            "state_dict": {"model.base.conv1.weight": torch.ones(2)},
            "state_dict_encrypted": True,
            "hyper_parameters": {"experiment_spec": {"model": {"last_stride": 1}}},
        },
        tmp_path / "tao.pth",
    )
    read = read_checkpoint_file(path, "evaluate.checkpoint")
    assert read.kind == TAO and set(read.model_state) == {"base.conv1.weight"}
    assert read.hyper_parameters["experiment_spec"]["model"]["last_stride"] == 1 and read.encrypted
    assert read.metadata is None and not read.holds_optimiser_state
    with pytest.raises(
        DataError,
        match=re.escape(
            f"evaluate.checkpoint: {path} is not a reid_tao training checkpoint (no model metadata inside)"
        ),
    ):
        read.require_reid_tao()


def test_a_wrapped_state_dict_is_peeled_and_loses_dataparallels_prefix(tmp_path):
    path = _save(
        {
            "state_dict": {
                "model": {
                    "module.conv1.weight": torch.ones(1),
                    "module.module.fc.bias": torch.ones(1),
                    7: torch.ones(1),
                    "step": 5,
                }
            }
        },
        tmp_path / "w.pth.tar",
    )
    read = read_checkpoint_file(path, "model.pretrained_model_path")
    assert read.kind == STATE_DICT and set(read.tensors) == {"conv1.weight", "fc.bias"}  # no int key, no int value
    assert read.model_state == {}


@pytest.mark.parametrize("weights", [False, True])
def test_a_safetensors_file(tmp_path, weights):
    path = tmp_path / "w.safetensors"
    save_file({"conv1.weight": torch.ones(2)}, str(path))
    read = read_checkpoint_file(str(path), "model.pretrained_model_path", weights=weights)
    assert read.kind == SAFETENSORS and set(read.tensors) == {"conv1.weight"}
    path.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="model.pretrained_model_path: cannot read .*w.safetensors"):
        read_checkpoint_file(str(path), "model.pretrained_model_path", weights=weights)


def test_checkpoint_errors_are_one_line_naming_the_field(tmp_path):
    with pytest.raises(DataError, match=r"^evaluate.checkpoint is not set; pass evaluate.checkpoint="):
        read_checkpoint_file("", "evaluate.checkpoint")
    with pytest.raises(DataError, match=r"^evaluate.checkpoint: checkpoint .*nope.pth does not exist$"):
        read_checkpoint_file(str(tmp_path / "nope.pth"), "evaluate.checkpoint")
    listed = _save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(DataError, match=r"is not a checkpoint \(a list, not a dict\)"):
        read_checkpoint_file(listed, "evaluate.checkpoint")
    torn = tmp_path / "torn.pth"
    torn.write_bytes(Path(_save({"state_dict": {"w": torch.ones(100)}}, tmp_path / "whole.pth")).read_bytes()[:300])
    with pytest.raises(
        DataError,
        match=r"^evaluate.checkpoint: cannot read .*torn.pth: it is not a PyTorch "
        r"checkpoint, or a corrupt one \(",
    ):
        read_checkpoint_file(str(torn), "evaluate.checkpoint")


def test_weights_files_expand_the_home_folder_and_need_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _save({"model_state_dict": {"fc.weight": torch.ones(1)}}, tmp_path / "w.pth")
    assert set(read_checkpoint_file("~/w.pth", "model.pretrained_model_path", weights=True).tensors) == {"fc.weight"}
    with pytest.raises(DataError, match="checkpoint ~/w.pth does not exist"):  # a checkpoint path is taken as is
        read_checkpoint_file("~/w.pth", "evaluate.checkpoint")
    listed = _save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(DataError, match=r"list.pth holds no tensors; expected a model state dict or checkpoint"):
        read_checkpoint_file(listed, "model.pretrained_model_path", weights=True)


def test_a_trusted_whole_module_is_weights_but_not_a_checkpoint(tmp_path):
    path = _save(torch.nn.Linear(2, 1), tmp_path / "module.pth")
    read = read_checkpoint_file(path, "model.pretrained_model_path", trust=True, weights=True)
    assert set(read.tensors) == {"weight", "bias"}
    with pytest.raises(DataError, match=r"is not a checkpoint \(a Linear, not a dict\)"):
        read_checkpoint_file(path, "evaluate.checkpoint", trust=True)
    with pytest.raises(DataError, match="model.trust_weights_file=true"):  # untrusted: never unpickled
        read_checkpoint_file(path, "model.pretrained_model_path", weights=True)
