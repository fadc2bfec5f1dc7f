"""Synthetic Market-1501 generator: layout, naming, query/gallery rules, idempotence, learnability."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_tao.data import synthetic
from reid_tao.data.synthetic import MARKER_NAME, generate_synthetic_market
from reid_tao.errors import ConfigError, DataError

NAME = re.compile(r"^(-1|\d{4})_c(\d)s1_(\d{6})_00\.jpg$")
SMALL = dict(num_train_ids=10, num_test_ids=6, num_cameras=3, images_per_camera=3, num_distractors=5, num_junk=3)


def _parse(folder: Path) -> list[tuple[int, int, Path]]:
    items = []
    for path in sorted(folder.iterdir()):
        match = NAME.match(path.name)
        assert match, f"bad Market name {path.name}"
        items.append((int(match.group(1)), int(match.group(2)), path))
    return items


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_market(tmp_path_factory.mktemp("syn") / "market", **SMALL, seed=3)


def test_layout_names_and_counts(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        ["bounding_box_train", "bounding_box_test", "query", MARKER_NAME]
    )
    train = _parse(dataset / "bounding_box_train")
    query = _parse(dataset / "query")
    gallery = _parse(dataset / "bounding_box_test")

    train_ids = {pid for pid, _, _ in train}
    test_ids = {pid for pid, _, _ in query + gallery if pid > 0}
    assert train_ids == set(range(1, 11))
    assert test_ids == set(range(11, 17))  # disjoint from train, like Market
    assert len(train) == 10 * 3 * 3
    assert len(query) + len(gallery) == 6 * 3 * 3 + 5 + 3
    assert {cam for _, cam, _ in train + query + gallery} == {1, 2, 3}

    frames = [path.name.split("_")[2] for _, _, path in train + query + gallery]
    assert len(set(frames)) == len(frames)  # unique file names across splits
    with Image.open(train[0][2]) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 128)

    marker = json.loads((dataset / MARKER_NAME).read_text())
    assert marker["params"]["seed"] == 3
    expected_counts = {"bounding_box_train": len(train), "bounding_box_test": len(gallery), "query": len(query)}
    assert marker["counts"] == expected_counts


def test_distractors_and_junk_only_in_gallery(dataset: Path) -> None:
    gallery_pids = [pid for pid, _, _ in _parse(dataset / "bounding_box_test")]
    assert gallery_pids.count(0) == 5
    assert gallery_pids.count(-1) == 3
    assert any(p.name.startswith("-1_c") for p in (dataset / "bounding_box_test").iterdir())
    for folder in ("query", "bounding_box_train"):
        assert all(pid > 0 for pid, _, _ in _parse(dataset / folder))


def test_every_query_has_a_cross_camera_gallery_match(dataset: Path) -> None:
    gallery_cams: dict[int, set[int]] = defaultdict(set)
    for pid, cam, _ in _parse(dataset / "bounding_box_test"):
        gallery_cams[pid].add(cam)
    query = _parse(dataset / "query")
    pairs = [(pid, cam) for pid, cam, _ in query]
    assert len(set(pairs)) == len(pairs)  # one query per (id, camera)
    assert {pid for pid, _ in pairs} == set(range(11, 17))
    for pid, cam in pairs:
        assert gallery_cams[pid] - {cam}, f"query {pid} cam {cam} has no gallery image on another camera"


def test_identity_is_recoverable_from_raw_pixels(dataset: Path) -> None:
    """Nearest neighbour on 16x8 raw pixels, searched only among *other* cameras, finds the same id."""
    train = _parse(dataset / "bounding_box_train")
    pids = np.array([pid for pid, _, _ in train])
    cams = np.array([cam for _, cam, _ in train])
    pixels = np.stack(
        [np.asarray(Image.open(p).resize((8, 16), Image.BILINEAR), dtype=np.float32).ravel() for _, _, p in train]
    )
    distances = ((pixels[:, None, :] - pixels[None, :, :]) ** 2).sum(-1)
    distances[cams[:, None] == cams[None, :]] = np.inf
    accuracy = (pids[distances.argmin(1)] == pids).mean()
    chance = 1 / len(set(pids.tolist()))
    assert accuracy > 0.6 > 5 * chance, f"cross-camera 1-NN accuracy {accuracy:.2f} (chance {chance:.2f})"


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    kwargs = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, images_per_camera=2, num_distractors=2, num_junk=1)
    a = generate_synthetic_market(tmp_path / "a", **kwargs, seed=1)
    b = generate_synthetic_market(tmp_path / "b", **kwargs, seed=1)
    c = generate_synthetic_market(tmp_path / "c", **kwargs, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def test_second_call_is_a_no_op_and_new_params_replace(tmp_path: Path) -> None:
    kwargs = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, images_per_camera=2, num_distractors=1, num_junk=1)
    root = generate_synthetic_market(tmp_path / "set", **kwargs)
    sentinel = root / "bounding_box_train" / "keep.txt"
    sentinel.write_text("not regenerated")  # a regeneration would drop this file
    assert generate_synthetic_market(tmp_path / "set", **kwargs) == root
    assert sentinel.exists()

    generate_synthetic_market(tmp_path / "set", **{**kwargs, "num_train_ids": 4})
    assert not sentinel.exists()
    assert len(list((root / "bounding_box_train").glob("*.jpg"))) == 4 * 2 * 2
    assert json.loads((root / MARKER_NAME).read_text())["params"]["num_train_ids"] == 4

    # A deleted image makes the set incomplete: it is regenerated.
    next((root / "query").glob("*.jpg")).unlink()
    generate_synthetic_market(tmp_path / "set", **{**kwargs, "num_train_ids": 4})
    assert len(list((root / "query").glob("*.jpg"))) == 2  # 2 test ids x max(1, 2 // 2) cameras
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp folders left behind


def test_empty_folder_is_filled_but_foreign_folder_is_refused(tmp_path: Path) -> None:
    kwargs = dict(num_train_ids=2, num_test_ids=2, num_cameras=2, images_per_camera=1, num_distractors=0, num_junk=0)
    (tmp_path / "empty").mkdir()
    assert (generate_synthetic_market(tmp_path / "empty", **kwargs) / MARKER_NAME).exists()

    foreign = tmp_path / "real_market"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a synthetic Market dataset"):
        generate_synthetic_market(foreign, **kwargs)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_render = synthetic._Painter.render

    def failing_render(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(synthetic._Painter, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_market(tmp_path / "set", num_train_ids=3, num_test_ids=2, num_cameras=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [{"num_cameras": 1}, {"num_cameras": 10}, {"num_train_ids": 0}, {"images_per_camera": 0}, {"num_junk": -1}],
)
def test_invalid_arguments(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError) as info:
        generate_synthetic_market(tmp_path / "x", **bad)
    assert isinstance(info.value, ConfigError)
    assert not (tmp_path / "x").exists()


def test_cli_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_market.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_market", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cli"
    argv = [str(out), "--num-train-ids", "2", "--num-test-ids", "2", "--num-cameras", "2", "--images-per-camera", "1"]
    assert module.main(argv + ["--num-distractors", "1", "--num-junk", "1"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"bounding_box_train\s+4 images,\s+2 ids, 2 cameras", printed)
    gallery_line = r"bounding_box_test\s+4 images,\s+2 ids, 2 cameras, 1 distractors \(0000\), 1 junk \(-1\)"
    assert re.search(gallery_line, printed)
    assert module.main([str(tmp_path / "bad"), "--num-cameras", "1"]) == ConfigError.exit_code
