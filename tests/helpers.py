"""Helpers shared by the tests: tiny Market-1501 style folders and overrides for seconds-long runs.

Import them with ``from helpers import ...`` (tests/ is on sys.path, see pyproject.toml)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tiny_backbone import NAME as TINY_BACKBONE

SUPPORT = Path(__file__).resolve().parent / "support"  # scripts and modules the tests run or import
# `python -m reid_tao` for a test's subprocess, with the test-only backbone of tiny_overrides registered
REID = (sys.executable, str(SUPPORT / "reid.py"))


def write_person(path: Path, pid: int, cam: int, index: int, size=(32, 16)) -> None:
    """An image whose colours depend on the identity, with camera brightness and noise."""
    rng = np.random.default_rng(pid * 1000 + cam * 100 + index)
    h, w = size
    top = np.array([(pid * 67) % 255, (pid * 131) % 255, (pid * 29) % 255], dtype=np.float32)
    bottom = np.array([(pid * 43) % 255, (pid * 97) % 255, (pid * 173) % 255], dtype=np.float32)
    image = np.empty((h, w, 3), dtype=np.float32)
    image[: h // 2] = top
    image[h // 2 :] = bottom
    image = image * (0.8 + 0.1 * cam) + rng.normal(0, 8, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)


def make_market(
    root: Path, train_ids=range(1, 7), test_ids=range(101, 105), cams=(1, 2), per_cam=3, size=(32, 16)
) -> Path:
    """train: train_ids x cams x per_cam; query: one per (test id, cam 1); gallery: the rest + distractor + junk."""
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for pid in train_ids:
        for cam in cams:
            for i in range(per_cam):
                write_person(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg", pid, cam, i, size)
    for pid in test_ids:
        write_person(root / "query" / f"{pid:04d}_c1s1_000000_00.jpg", pid, 1, 0, size)
        for cam in cams:
            for i in range(1, per_cam):
                write_person(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg", pid, cam, i, size)
    write_person(root / "bounding_box_test" / "0000_c1s1_000009_00.jpg", 0, 1, 9, size)
    write_person(root / "bounding_box_test" / "-1_c2s1_000009_00.jpg", 999, 2, 9, size)
    return root


def tiny_overrides(market: Path, results: Path, **extra) -> list:
    """Overrides for a seconds-long CPU run on the tiny dataset, with the test-only backbone (tests/support/
    tiny_backbone.py; registered by conftest.py): a test of a real backbone names it in ``extra``."""
    overrides = {
        "results_dir": str(results),
        "model.backbone": TINY_BACKBONE,
        "model.pretrain_choice": "''",
        "model.input_height": 32,
        "model.input_width": 16,
        "model.feat_dim": 32,
        "dataset.train_dataset_dir": str(market / "bounding_box_train"),
        "dataset.query_dataset_dir": str(market / "query"),
        "dataset.test_dataset_dir": str(market / "bounding_box_test"),
        "dataset.batch_size": 8,
        "dataset.num_instances": 2,
        "dataset.num_workers": 0,
        "dataset.padding": 2,
        "dataset.val_batch_size": 16,
        "train.num_epochs": 2,
        "train.optim.warmup_iters": 1,
        "train.optim.lr_steps": "[1]",
        # only reid_model_latest.pth: tests that check the periodic model_epoch_NNN.pth files ask for them with
        # train.checkpoint_interval
        "train.checkpoint_interval": 1000,
        "train.accelerator": "cpu",
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


def tiny_adaptation_overrides(source_checkpoint: Path) -> list:
    """Adaptation from ``source_checkpoint`` with clustering settings that find clusters among the tiny
    dataset's few images (add to ``tiny_overrides`` without validation folders)."""
    return [
        "adaptation.enable=true",
        f"adaptation.source_checkpoint={source_checkpoint}",
        "adaptation.eps=0.7",
        "adaptation.k1=4",
        "adaptation.k2=2",
    ]


def write_untrained_checkpoint(market: Path, path: Path, num_classes: int = 6) -> Path:
    """A reid_tao checkpoint of an untrained tiny_overrides model (no training run needed)."""
    import torch

    from reid_tao.builders import build_model, checkpoint_metadata, load_experiment

    config = load_experiment(None, tiny_overrides(market, path.parent))
    model = build_model(config, num_classes, load_pretrained=False)
    torch.save(
        {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "reid_tao": checkpoint_metadata(config, num_classes),
        },
        path,
    )
    return path
