"""List-file datasets (MSMT17 layout): parsing, image roots, cameras from names, id 0 as a real identity."""

import json
import re
from pathlib import Path

import pytest

from reid_tao.cli import main
from reid_tao.data.layouts import detect_layout, read_split, split_images
from reid_tao.data.list_file import camera_from_name
from reid_tao.errors import DataError

from helpers import tiny_overrides, write_person


def msmt_name(pid: int, index: int, cam: int) -> str:
    return f"{pid:04d}/{pid:04d}_{index:03d}_{cam:02d}_0303morning_{index:04d}_0.jpg"


def make_msmt17(root: Path, train_folder="train", test_folder="test", size=(32, 16)) -> Path:
    """MSMT17-V1-style tree: images under train/ and test/, lists beside them; ids start at 0 in each split.

    Train: ids 0-5 x cameras 1-2 x 3 images. Query: one image per test id 0-3 (ids restart at 0, as in
    MSMT17) on camera 1; gallery: two per test id on camera 2 and one on camera 1. Line styles vary: camera from
    the name, or as a third column."""
    lines = {"list_train.txt": [], "list_query.txt": [], "list_gallery.txt": []}

    def add(list_name, folder, pid, index, cam, with_camera_column):
        relative = msmt_name(pid, index, cam)
        (root / folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write_person(root / folder / relative, pid + 1, cam, index, size)
        lines[list_name].append(f"{relative} {pid}" + (f" {cam}" if with_camera_column else ""))

    for pid in range(6):
        for cam in (1, 2):
            for index in range(3):
                add("list_train.txt", train_folder, pid, cam * 10 + index, cam, index == 0)
    for pid in range(4):
        add("list_query.txt", test_folder, pid, 0, 1, False)
        for index, cam in ((1, 2), (2, 2), (3, 1)):
            add("list_gallery.txt", test_folder, pid, index, cam, pid % 2 == 0)
    for name, entries in lines.items():
        (root / name).write_text("\n".join(entries) + "\n")
    return root


@pytest.fixture(scope="module")
def msmt17(tmp_path_factory) -> Path:
    return make_msmt17(tmp_path_factory.mktemp("msmt17_v1"))


@pytest.mark.parametrize(
    "name, camera",
    [
        ("0000_000_01_0303morning_0015_0.jpg", 1),  # MSMT17: pid_index_camera_date+time_frame_box
        ("3059_010_15_0113noon_0906_1.jpg", 15),
        ("0002_c3s1_000451_03.jpg", 3),  # Market
        ("person.jpg", None),
    ],
)
def test_camera_from_name(name, camera):
    assert camera_from_name(name) == camera


def test_list_file_ids_cameras_and_roots(msmt17):
    assert detect_layout(str(msmt17 / "list_train.txt")) == "list_file"
    train = read_split(str(msmt17 / "list_train.txt"), "dataset.train_dataset_dir")
    assert len(train) == 36 and all(Path(r.path).is_file() for r in train)
    assert all(r.path.startswith(str(msmt17 / "train")) for r in train)
    # id 0 is an ordinary person: shifted to 1 for the protocol, shown as the file's 0.
    assert {r.shown_pid for r in train} == set(range(6)) and {r.pid for r in train} == set(range(1, 7))
    assert {r.camid for r in train} == {1, 2}
    query = read_split(str(msmt17 / "list_query.txt"), "q")
    assert all(r.path.startswith(str(msmt17 / "test")) for r in query)
    assert [r.shown_pid for r in query] == [0, 1, 2, 3]


def test_msmt17_v2_folders_and_paths_beside_the_list(tmp_path):
    root = make_msmt17(tmp_path / "v2", train_folder="mask_train_v2", test_folder="mask_test_v2")
    assert all("mask_train_v2" in r.path for r in read_split(str(root / "list_train.txt"), "x"))
    # Paths relative to the list's own folder; -1 is junk; a third column overrides the name's camera.
    (tmp_path / "mine" / "a").mkdir(parents=True)
    for name in ("p1.jpg", "p2.jpg", "p3.jpg"):
        write_person(tmp_path / "mine" / "a" / name, 1, 1, 0)
    (tmp_path / "mine" / "own.txt").write_text("# my list\na/p1.jpg 0 4\n\na/p2.jpg -1 4\na/p3.jpg 7 2  # comment\n")
    records = read_split(str(tmp_path / "mine" / "own.txt"), "x")
    assert [(r.shown_pid, r.camid) for r in records] == [(0, 4), (7, 2)]
    # Inference takes every listed image, junk too, ids optional.
    (tmp_path / "mine" / "plain.txt").write_text("a/p3.jpg\na/p1.jpg\n")
    assert split_images(str(tmp_path / "mine" / "plain.txt"), "x") == [
        str(tmp_path / "mine" / "a" / n) for n in ("p3.jpg", "p1.jpg")
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0000/0000_000_01_0303morning_0015_0.jpg", "expected 'relative/path pid [camid]'"),
        ("0000/0000_000_01_0303morning_0015_0.jpg zero", "must be integers"),
        ("0000/0000_000_01_0303morning_0015_0.jpg -5", "person id -5 is invalid"),
        ("0000/person.jpg 0", "no camera in the file name"),
        ("0000/missing_000_01_x_0_0.jpg 0", "is not found relative to"),
    ],
)
def test_bad_list_line_names_file_and_line(msmt17, tmp_path, line, message):
    bad = tmp_path / "list_bad.txt"
    good = (msmt17 / "list_train.txt").read_text().splitlines()
    bad.write_text("\n".join([line] + good) + "\n" if "not found" in message else "\n".join(good[:2] + [line]) + "\n")
    (tmp_path / "train").symlink_to(msmt17 / "train")
    with pytest.raises(DataError, match=re.escape(message)) as error:
        read_split(str(bad), "dataset.train_dataset_dir")
    expected_line = 1 if "not found" in message else 3
    assert f"dataset.train_dataset_dir: {bad} line {expected_line}:" in str(error.value)


def test_bad_list_line_is_one_line_from_the_cli(msmt17, tmp_path, capsys):
    bad = tmp_path / "list_train.txt"
    bad.write_text((msmt17 / "list_train.txt").read_text() + "0000/0000_000_01_0303morning_0015_0.jpg 0 1 extra\n")
    (tmp_path / "train").symlink_to(msmt17 / "train")
    code = main(
        ["train"]
        + tiny_overrides(
            msmt17,
            tmp_path / "r",
            **{
                "dataset.train_dataset_dir": str(bad),
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
            },
        )
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{bad} line 37: expected 'relative/path pid [camid]'" in err


def test_msmt17_lists_train_and_evaluate_through_the_cli(msmt17, tmp_path, capsys):
    lists = {
        "dataset.train_dataset_dir": str(msmt17 / "list_train.txt"),
        "dataset.query_dataset_dir": str(msmt17 / "list_query.txt"),
        "dataset.test_dataset_dir": str(msmt17 / "list_gallery.txt"),
        "train.num_epochs": 1,
    }
    assert main(["train"] + tiny_overrides(msmt17, tmp_path, **lists)) == 0, capsys.readouterr().err
    checkpoint = tmp_path / "train" / "reid_model_latest.pth"
    code = main(
        [
            "evaluate",
            f"results_dir={tmp_path}",
            f"evaluate.checkpoint={checkpoint}",
            f"dataset.query_dataset_dir={msmt17 / 'list_query.txt'}",
            f"dataset.test_dataset_dir={msmt17 / 'list_gallery.txt'}",
            "dataset.num_workers=0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    num_query = len((msmt17 / "list_query.txt").read_text().split("\n")) - 1
    num_gallery = len((msmt17 / "list_gallery.txt").read_text().split("\n")) - 1
    # Every query, the one with id 0 included, has a gallery match on another camera: all are valid.
    assert (
        (metrics["num_query"], metrics["num_gallery"], metrics["num_valid_query"])
        == (num_query, num_gallery, num_query)
        == (4, 12, 4)
    )


def test_query_list_resolves_to_test_by_msmt17_rule_when_its_first_name_is_also_in_train(tmp_path):
    # MSMT17 numbers test identities from 0 again: the query list's first name also exists under train/.
    root = make_msmt17(tmp_path / "msmt17_v1")
    first_query = (root / "list_query.txt").read_text().split()[0]
    (root / "train" / first_query).write_bytes((root / "test" / first_query).read_bytes())
    for name in ("list_query.txt", "list_gallery.txt"):
        records = read_split(str(root / name), "dataset.query_dataset_dir")
        assert all(r.path.startswith(str(root / "test") + "/") for r in records), name
    assert all(
        r.path.startswith(str(root / "train") + "/")
        for r in read_split(str(root / "list_train.txt"), "dataset.train_dataset_dir")
    )


def test_list_with_a_missing_image_is_one_line_naming_list_and_line(msmt17, tmp_path, capsys):
    lines = (msmt17 / "list_query.txt").read_text().splitlines()
    partial = tmp_path / "list_query.txt"
    partial.write_text("\n".join(lines[:2] + ["0003/0003_099_01_0303morning_0099_0.jpg 3"] + lines[2:]) + "\n")
    (tmp_path / "test").symlink_to(msmt17 / "test")
    with pytest.raises(DataError, match=r"line 3: image 0003/0003_099_01_0303morning_0099_0\.jpg is missing from"):
        read_split(str(partial), "dataset.query_dataset_dir")
    # Through the CLI: one line before training starts (no train/ folder output beyond the config).
    code = main(
        ["train"]
        + tiny_overrides(
            msmt17,
            tmp_path / "r",
            **{
                "dataset.train_dataset_dir": str(msmt17 / "list_train.txt"),
                "dataset.query_dataset_dir": str(partial),
                "dataset.test_dataset_dir": str(msmt17 / "list_gallery.txt"),
            },
        )
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{partial} line 3" in err, err
    assert not list((tmp_path / "r").rglob("*.pth"))


def test_list_complete_under_two_unruled_folders_is_ambiguous(msmt17, tmp_path):
    (tmp_path / "train").symlink_to(msmt17 / "train")
    (tmp_path / "test").symlink_to(msmt17 / "train")  # the same names under both folders
    mine = tmp_path / "my_split.txt"
    mine.write_text((msmt17 / "list_train.txt").read_text())
    with pytest.raises(DataError, match="ambiguous"):
        read_split(str(mine), "dataset.train_dataset_dir")
    (tmp_path / "list_train.txt").write_text(mine.read_text())  # MSMT17's rule decides: train/
    assert read_split(str(tmp_path / "list_train.txt"), "x")[0].path.startswith(str(tmp_path / "train") + "/")


def test_dataset_layout_is_honoured(msmt17, tmp_path, capsys):
    from reid_tao.builders import build_datamodule, load_experiment

    lists = {
        "dataset.train_dataset_dir": str(msmt17 / "list_train.txt"),
        "dataset.query_dataset_dir": str(msmt17 / "list_query.txt"),
        "dataset.test_dataset_dir": str(msmt17 / "list_gallery.txt"),
    }
    config = load_experiment(None, tiny_overrides(msmt17, tmp_path, **lists, **{"dataset.layout": "list_file"}))
    datamodule = build_datamodule(config)
    assert datamodule.layout == "list_file"
    datamodule.setup()
    assert len(datamodule.train_records) == 36 and len(datamodule.query_records) == 4
    # A named layout is used as named: market1501 on a list file, or on the folder of the lists, is one line.
    for path, message in (
        (msmt17 / "list_train.txt", "dataset.layout=market1501 says; set dataset.layout=list_file"),
        (msmt17, "holds list files (list_gallery.txt, list_query.txt, list_train.txt)"),
    ):
        code = main(
            ["train"]
            + tiny_overrides(
                msmt17,
                tmp_path / "r",
                **{**lists, "dataset.train_dataset_dir": str(path), "dataset.layout": "market1501"},
            )
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    # list_file on a folder (MSMT17's train/ holds a subfolder per identity), and an unknown layout name.
    with pytest.raises(DataError, match="looks like a folder of subfolders, .* not a .txt list"):
        read_split(str(msmt17 / "train"), "dataset.train_dataset_dir", "list_file")
    code = main(["train"] + tiny_overrides(msmt17, tmp_path / "r", **{**lists, "dataset.layout": "msmt"}))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "dataset.layout='msmt' is not supported" in err and "'list_file'" in err, err


@pytest.mark.parametrize("camera_field", ["ab", "c1", "\u00b9\u00b2"])  # letters; Market-like; superscript digits
def test_camera_field_without_ascii_digits_is_one_data_error_line(tmp_path, camera_field):
    name = f"0000_000_{camera_field}_0303morning_0015_0.jpg"
    assert camera_from_name(name) is None  # not a ValueError from int()
    (tmp_path / "0000").mkdir()
    write_person(tmp_path / "0000" / name, 1, 1, 0)
    (tmp_path / "own.txt").write_text(f"0000/{name} 0\n")
    with pytest.raises(DataError, match="line 1: no camera in the file name") as error:
        read_split(str(tmp_path / "own.txt"), "dataset.train_dataset_dir")
    assert len(str(error.value).splitlines()) == 1
