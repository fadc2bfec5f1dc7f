"""scripts/make_val_split.py: a validation split carved from the training identities of a Market root."""

import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from reid_tao.data import val_split
from reid_tao.data.datamodule import MARKET_PREPROCESSING, LoaderSettings, ReidDataModule
from reid_tao.data.market import scan_market_folder
from reid_tao.data.synthetic import generate_synthetic_market
from reid_tao.errors import ConfigError, DataError

from helpers import write_person

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_val_split.py"
_spec = importlib.util.spec_from_file_location("make_val_split", SCRIPT)
mvs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mvs)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "m"
    generate_synthetic_market(
        root, num_train_ids=12, num_test_ids=4, num_cameras=3, images_per_camera=3, height=32, width=16
    )
    # Junk and distractor boxes in the training folder must stay out of the validation folders.
    train = root / "bounding_box_train"
    write_person(train / "-1_c1s1_000001_00.jpg", 999, 1, 1)
    write_person(train / "0000_c2s1_000001_00.jpg", 0, 2, 1)
    write_person(train / "0000_c3s1_000002_00.jpg", 0, 3, 2)
    return root


@pytest.fixture(scope="module")
def split_root(market, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("splits") / "val"
    mvs.make_val_split(market, out, num_val_ids=4, seed=3)
    return out


def _records(root: Path, folder: str):
    return scan_market_folder(str(root / folder), folder)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_ids_are_disjoint_and_match_split_json(market, split_root):
    split = json.loads((split_root / "split.json").read_text())
    train_ids = {r.pid for r in _records(split_root, "bounding_box_train")}
    query_ids = {r.pid for r in _records(split_root, "query")}
    gallery_ids = {r.pid for r in _records(split_root, "bounding_box_test")}
    assert split["seed"] == 3 and split["num_val_ids"] == 4 and split["source"] == str(market.absolute())
    assert split["val_ids"] == sorted(split["val_ids"]) and len(split["val_ids"]) == 4
    assert gallery_ids == query_ids == set(split["val_ids"])
    assert not train_ids & set(split["val_ids"])
    assert train_ids == set(range(0, 13)) - set(split["val_ids"])  # distractors (0) stay in train


def test_every_query_has_a_gallery_match_on_another_camera(split_root):
    gallery_cams = defaultdict(set)
    for record in _records(split_root, "bounding_box_test"):
        gallery_cams[record.pid].add(record.camid)
    query = _records(split_root, "query")
    assert len(query) == 4 * 3  # 4 ids x 3 cameras x 1 query per camera
    for record in query:
        assert gallery_cams[record.pid] - {record.camid}, record.path


def test_counts_add_up_and_junk_is_left_out(market, split_root):
    source = _records(market, "bounding_box_train")
    parts = {folder: _records(split_root, folder) for folder in ("bounding_box_train", "query", "bounding_box_test")}
    assert len(source) == sum(len(records) for records in parts.values()) == 12 * 9 + 2
    names = {Path(r.path).name for records in parts.values() for r in records}
    assert names == {Path(r.path).name for r in source}
    all_files = [p.name for folder in parts for p in (split_root / folder).iterdir()]
    assert not any(name.startswith("-1_") for name in all_files) and len(all_files) == len(source)
    assert all(r.pid != 0 for folder in ("query", "bounding_box_test") for r in parts[folder])


def test_files_are_hard_links_on_the_same_file_system(market, split_root):
    for path in (split_root / "query").iterdir():
        assert path.stat().st_ino == (market / "bounding_box_train" / path.name).stat().st_ino
    assert json.loads((split_root / "split.json").read_text())["counts"]["copied"] == 0


def test_falls_back_to_copies_when_linking_fails(market, tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(val_split.os, "link", refuse)
    split = mvs.make_val_split(market, tmp_path / "copy", num_val_ids=2, seed=0)
    copy = next((tmp_path / "copy" / "query").iterdir())
    assert copy.stat().st_ino != (market / "bounding_box_train" / copy.name).stat().st_ino
    assert copy.read_bytes() == (market / "bounding_box_train" / copy.name).read_bytes()
    assert split["counts"]["linked"] == 0 and split["counts"]["copied"] == 12 * 9 + 2


def test_same_seed_same_split_other_seed_differs(market, split_root, tmp_path):
    again = mvs.make_val_split(market, tmp_path / "again", num_val_ids=4, seed=3)
    first = json.loads((split_root / "split.json").read_text())
    assert again["val_ids"] == first["val_ids"]
    for folder in ("query", "bounding_box_test", "bounding_box_train"):
        assert sorted(os.listdir(tmp_path / "again" / folder)) == sorted(os.listdir(split_root / folder))
    others = {
        tuple(mvs.make_val_split(market, tmp_path / f"s{seed}", num_val_ids=4, seed=seed)["val_ids"])
        for seed in (0, 1, 2)
    }
    assert len(others | {tuple(first["val_ids"])}) > 1


def test_queries_per_camera(market, tmp_path):
    split = mvs.make_val_split(market, tmp_path / "q2", num_val_ids=3, seed=0, queries_per_camera=2)
    query = _records(tmp_path / "q2", "query")
    per_id_cam = defaultdict(int)
    for record in query:
        per_id_cam[record.pid, record.camid] += 1
    assert set(per_id_cam.values()) == {2} and len(per_id_cam) == 3 * 3
    assert split["counts"]["gallery_images"] == 3 * 3 * 1


def test_queries_without_cross_camera_gallery_go_back(tmp_path):
    root = tmp_path / "m"
    train = root / "bounding_box_train"
    train.mkdir(parents=True)
    for pid in range(1, 6):  # one image on each of two cameras: one query, one gallery image
        for cam in (1, 2):
            write_person(train / f"{pid:04d}_c{cam}s1_000000_00.jpg", pid, cam, 0)
    write_person(train / "0006_c1s1_000000_00.jpg", 6, 1, 0)  # one camera only: never a query
    split = mvs.make_val_split(root, tmp_path / "out", num_val_ids=4, seed=0)
    query = _records(tmp_path / "out", "query")
    gallery = _records(tmp_path / "out", "bounding_box_test")
    with_two_cams = [pid for pid in split["val_ids"] if pid != 6]
    assert sorted(r.pid for r in query) == with_two_cams
    assert split["val_ids_without_query"] == ([6] if 6 in split["val_ids"] else [])
    for record in query:
        assert any(g.pid == record.pid and g.camid != record.camid for g in gallery)


def test_a_query_whose_gallery_is_all_on_its_own_camera_goes_back(tmp_path):
    """Each identity: three images on camera 1, one on camera 2. The camera-1 query would only find gallery
    images of its own camera (no match under the Market protocol), so it goes back to the gallery; the
    camera-2 query keeps its camera-1 matches."""
    train = tmp_path / "m" / "bounding_box_train"
    train.mkdir(parents=True)
    for pid in range(1, 7):
        for index in range(3):
            write_person(train / f"{pid:04d}_c1s1_{index:06d}_00.jpg", pid, 1, index)
        write_person(train / f"{pid:04d}_c2s1_000000_00.jpg", pid, 2, 0)
    split = mvs.make_val_split(tmp_path / "m", tmp_path / "out", num_val_ids=4, seed=0)
    query = _records(tmp_path / "out", "query")
    gallery = _records(tmp_path / "out", "bounding_box_test")
    assert sorted((r.pid, r.camid) for r in query) == [(pid, 2) for pid in split["val_ids"]]
    for record in query:
        assert any(g.pid == record.pid and g.camid != record.camid for g in gallery), record.path
    assert len(gallery) == 4 * 3


def test_result_loads_like_reid_train_reads_it(split_root):
    module = ReidDataModule(
        str(split_root / "bounding_box_train"),
        str(split_root / "query"),
        str(split_root / "bounding_box_test"),
        preprocessing=replace(MARKET_PREPROCESSING, input_size=(32, 16)),
        loader=LoaderSettings(batch_size=8, num_instances=2, num_workers=0),
    )
    module.setup("fit")
    assert module.num_classes == 12 - 4 + 1 and module.has_validation  # + the distractor label, as in the source
    assert len(module.query_records) == 12


def test_cli_writes_split_and_prints_summary(market, tmp_path):
    result = _run(market, tmp_path / "cli", "--num-val-ids", "3", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "subset" in result.stdout and "query" in result.stdout and "gallery" in result.stdout
    split = json.loads((tmp_path / "cli" / "split.json").read_text())
    assert split["val_ids"] == mvs.make_val_split(market, tmp_path / "lib", num_val_ids=3, seed=5)["val_ids"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


@pytest.mark.parametrize("case", ["out_not_empty", "too_many_ids", "no_train_folder"])
def test_cli_refusals_exit_2_with_one_line(market, tmp_path, case):
    out, source, num_ids = tmp_path / "out", market, "4"
    if case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "too_many_ids":
        num_ids = "11"  # 12 training ids: 11 would leave one
    else:
        source = tmp_path / "not_market"
        source.mkdir()
    result = _run(source, out, "--num-val-ids", num_ids)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    if case == "out_not_empty":
        assert sorted(os.listdir(out)) == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_library_refusals_and_empty_out_dir_accepted(market, tmp_path):
    with pytest.raises(ConfigError, match="num-val-ids"):
        mvs.make_val_split(market, tmp_path / "a", num_val_ids=0)
    with pytest.raises(ConfigError, match="queries-per-camera"):
        mvs.make_val_split(market, tmp_path / "a", num_val_ids=2, queries_per_camera=0)
    with pytest.raises(DataError, match="not empty"):
        (tmp_path / "file").write_text("x")
        mvs.make_val_split(market, tmp_path / "file", num_val_ids=2)
    (tmp_path / "empty").mkdir()
    split = mvs.make_val_split(market, tmp_path / "empty", num_val_ids=10)  # 12 ids - 10 = 2 left: allowed
    assert len(split["val_ids"]) == 10 and (tmp_path / "empty" / "split.json").is_file()
