"""Market-1501 parsing, folders, transforms and the datamodule."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from reid_tao.data.batch import Batch
from reid_tao.data.datamodule import MARKET_PREPROCESSING, AugmentSettings, LoaderSettings, ReidDataModule
from reid_tao.data.datasets import ImageDataset, SeededSampler
from reid_tao.data.layouts import LAYOUTS, detect_layout, read_split
from reid_tao.data.market import parse_market_name, scan_market_folder
from reid_tao.data.records import relabel, summary_table
from reid_tao.data.samplers import PKSampler
from reid_tao.data.transforms import build_eval_transform, build_train_transform
from reid_tao.errors import DataError

from helpers import make_market, write_person


@pytest.mark.parametrize(
    "name, expected",
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),
        ("-1_c3s2_012345_01.jpg", (-1, 3)),  # junk: TAO's regex reads this as id 1
        ("0000_c6s4_000001_00.png", (0, 6)),  # distractor
        ("1501_c2s3_000001_00.jpeg", (1501, 2)),
        ("Thumbs.db", None),
        ("person_c1.jpg", None),
    ],
)
def test_parse_market_name(name, expected):
    assert parse_market_name(name) == expected


def test_scan_skips_junk_keeps_distractors_accepts_png(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for name in (
        "0001_c1s1_000001_00.jpg",
        "0001_c2s1_000002_00.png",
        "0000_c1s1_000003_00.jpeg",
        "-1_c1s1_000004_00.jpg",
    ):
        write_person(folder / name, 1, 1, 0)
    (folder / "notes.txt").write_text("stray file")  # TAO counts raw listings (bug B7)
    records = scan_market_folder(str(folder), "dataset.test_dataset_dir")
    assert sorted((r.pid, r.camid) for r in records) == [(0, 1), (1, 1), (1, 2)]
    assert all(not r.path.endswith("notes.txt") for r in records)


def test_relabel_maps_to_consecutive_labels():
    from reid_tao.data.records import ImageRecord

    records = [ImageRecord("a", 7, 1), ImageRecord("b", 3, 1), ImageRecord("c", 7, 2), ImageRecord("d", 1500, 1)]
    labels, mapping = relabel(records)
    assert labels == [1, 0, 1, 2] and mapping == {3: 0, 7: 1, 1500: 2}


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset.train_dataset_dir: folder .*missing does not exist"):
        scan_market_folder(str(tmp_path / "missing"), "dataset.train_dataset_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no .jpg/.jpeg/.png images"):
        scan_market_folder(str(tmp_path / "empty"), "dataset.train_dataset_dir")
    odd = tmp_path / "odd"
    odd.mkdir()
    write_person(odd / "frame_17.jpg", 1, 1, 0)
    with pytest.raises(DataError, match=r"e.g. 0002_c1s1_000451_03.jpg\); found e.g. 'frame_17.jpg'"):
        scan_market_folder(str(odd), "dataset.query_dataset_dir")


def test_corrupt_image_names_the_file(tmp_path):
    broken = tmp_path / "0001_c1s1_000001_00.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = ImageDataset([str(broken)], [0], [1], build_eval_transform((32, 16), [0.5] * 3, [0.5] * 3))
    with pytest.raises(DataError, match=r"cannot read image .*0001_c1s1_000001_00.jpg"):
        dataset[0]


def test_single_identity_training_folder_is_rejected(tmp_path):
    root = make_market(tmp_path / "m", train_ids=[5], test_ids=[101])
    module = ReidDataModule(str(root / "bounding_box_train"), loader=LoaderSettings(batch_size=4, num_instances=2))
    with pytest.raises(DataError, match="single identity"):
        module.setup("fit")


def test_summary_table_counts(tiny_market):
    records = scan_market_folder(str(tiny_market / "bounding_box_test"), "x")
    table = summary_table({"gallery": records})
    assert table.splitlines()[2].split() == ["gallery", "5", "17", "2"]  # 4 ids + distractor; junk skipped


def _image(h=40, w=20):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_eval_transform_resizes_and_normalises():
    out = build_eval_transform((32, 16), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(Image.new("RGB", (7, 9), (255, 0, 128)))
    assert out.shape == (3, 32, 16)
    assert torch.allclose(out[:, 5, 5], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]), atol=1e-4)


def test_train_transform_flip_rate_and_erasing():
    image = _image()
    mean = [0.2, 0.4, 0.6]
    flip_only = build_train_transform((40, 20), mean, [1, 1, 1], flip_prob=0.5, padding=0, erase_prob=0)
    reference = build_eval_transform((40, 20), mean, [1, 1, 1])(image)
    flips = 0
    torch.manual_seed(0)
    for _ in range(400):
        out = flip_only(image)
        if torch.allclose(out, reference.flip(2)):
            flips += 1
        else:
            assert torch.allclose(out, reference)
    assert 160 < flips < 240
    always_erase = build_train_transform((40, 20), mean, [1, 1, 1], flip_prob=0, padding=0, erase_prob=1.0)
    erased = always_erase(image)
    zero_fraction = (erased == 0).all(dim=0).float().mean().item()  # 0 after normalising = pixel_mean
    assert 0.02 <= zero_fraction <= 0.4


def test_pad_and_crop_keep_size():
    image = _image()
    reference = build_eval_transform((40, 20), [0, 0, 0], [1, 1, 1])(image)
    padded = torch.nn.functional.pad(reference, (5, 5, 5, 5))  # zero border, as T.Pad(5) then ToTensor
    transform = build_train_transform((40, 20), [0, 0, 0], [1, 1, 1], flip_prob=0, padding=5, erase_prob=0)
    offsets = set()
    torch.manual_seed(0)
    for _ in range(60):
        out = transform(image)
        assert out.shape == (3, 40, 20)
        # the output is a 40x20 window of the zero-padded image at some offset in 0..10
        matches = [
            (dy, dx) for dy in range(11) for dx in range(11) if torch.equal(out, padded[:, dy : dy + 40, dx : dx + 20])
        ]
        assert matches, "the crop is not a window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 20  # random offsets, not always the same window


@pytest.mark.parametrize("pipeline", ["workers", "cached"])
def test_training_batches_are_normalised_with_each_channels_own_mean_and_std(tiny_market, tmp_path, pipeline):
    """A flat-coloured image through the training pipeline (no flip/pad/erase effect) gives
    (value / 255 - mean[c]) / std[c] in channel c: mean and std are not reversed or mixed up."""
    from reid_tao.data.datamodule import AugmentSettings, Preprocessing

    root = tmp_path / "flat"
    root.mkdir()
    colours = {1: (200, 100, 30), 2: (20, 220, 160)}
    for pid, colour in colours.items():
        for index in range(4):
            Image.new("RGB", (16, 32), colour).save(root / f"{pid:04d}_c1s1_{index:06d}_00.jpg", quality=100)
    mean, std = (0.1, 0.5, 0.8), (0.2, 0.3, 0.4)
    module = ReidDataModule(
        str(root),
        preprocessing=Preprocessing((32, 16), mean, std),
        augment=AugmentSettings(flip_prob=0.0, padding=0, erase_prob=0.0),
        loader=LoaderSettings(batch_size=4, num_instances=2),
        pipeline=pipeline,
    )
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    batch = module.train_pipeline.on_after_batch_transfer(batch, 0)
    paths = [module.train_records[i].path for i in batch.indices.tolist()]
    for image, path in zip(batch.images, paths):
        pixel = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)[16, 8] / 255
        expected = torch.tensor((pixel - np.array(mean)) / np.array(std), dtype=torch.float32)
        torch.testing.assert_close(image[:, 16, 8], expected, atol=1e-5, rtol=0)


def test_seeded_sampler_makes_augmentation_reproducible(tiny_market):
    records = scan_market_folder(str(tiny_market / "bounding_box_train"), "x")
    labels, _ = relabel(records)
    transform = build_train_transform((32, 16), [0, 0, 0], [1, 1, 1], padding=4)
    dataset = ImageDataset([r.path for r in records], labels, [r.camid for r in records], transform)
    sampler = SeededSampler(PKSampler(labels, batch_size=4, num_instances=2, seed=1), seed=1)
    sampler.set_epoch(3)
    first = [dataset[item][0] for item in sampler]
    torch.manual_seed(12345)  # the global RNG state must not matter
    again = [dataset[item][0] for item in sampler]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    sampler.set_epoch(4)
    other = [dataset[item][0] for item in sampler]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_datamodule_builds_pk_batches(tiny_market):
    module = ReidDataModule(
        str(tiny_market / "bounding_box_train"),
        str(tiny_market / "query"),
        str(tiny_market / "bounding_box_test"),
        preprocessing=replace(MARKET_PREPROCESSING, input_size=(32, 16)),
        augment=AugmentSettings(padding=2),
        loader=LoaderSettings(batch_size=8, num_instances=2, num_workers=0),
    )
    module.setup("fit")
    assert module.num_classes == 6 and module.has_validation
    images, labels, camids, _ = next(iter(module.train_dataloader()))
    assert images.shape == (8, 3, 32, 16)
    assert sorted(torch.bincount(labels).tolist())[-4:] == [2, 2, 2, 2]
    val = list(module.val_dataloader())
    assert sum(len(b[1]) for b in val) == len(module.query_records) + len(module.gallery_records)


def test_seeded_sampler_gives_each_process_its_own_augmentation_seeds():
    pids = [0, 0, 1, 1, 2, 2, 3, 3]
    seeds = []
    for rank in (0, 1):
        sampler = SeededSampler(
            PKSampler(pids, batch_size=2, num_instances=2, seed=1, rank=rank, world_size=2), seed=1, rank=rank
        )
        seeds.append({seed for _, seed in sampler})
    assert not seeds[0] & seeds[1]


def test_read_split_detects_market_folders(tiny_market, tmp_path):
    folder = str(tiny_market / "bounding_box_test")
    assert detect_layout(folder) == "market1501" and "market1501" in LAYOUTS
    assert read_split(folder, "x") == read_split(folder, "x", layout="market1501") == scan_market_folder(folder, "x")
    with pytest.raises(DataError, match=r"dataset.query_dataset_dir: folder .*missing does not exist"):
        read_split(str(tmp_path / "missing"), "dataset.query_dataset_dir")  # no layout matches: the default reports
    with pytest.raises(ValueError, match="layout 'msmt'"):
        read_split(folder, "x", layout="msmt")


def test_loaders_yield_named_batches(tiny_market):
    module = ReidDataModule(
        str(tiny_market / "bounding_box_train"),
        str(tiny_market / "query"),
        str(tiny_market / "bounding_box_test"),
        preprocessing=replace(MARKET_PREPROCESSING, input_size=(32, 16)),
        loader=LoaderSettings(batch_size=8, num_instances=2, num_workers=0),
    )
    module.setup("fit")
    train, val = next(iter(module.train_dataloader())), next(iter(module.val_dataloader()))
    assert isinstance(train, Batch) and isinstance(val, Batch)
    assert train.images.shape == (8, 3, 32, 16) and train.pids.shape == train.camids.shape == train.indices.shape
    assert val.indices.tolist() == list(range(len(val.indices)))


def test_too_few_identities_for_pk_batches_over_all_processes(tiny_market):
    class Trainer:  # what setup reads of a Lightning trainer: 6 identities < 2 per batch x 4 processes
        global_rank, world_size = 0, 4

    module = ReidDataModule(
        str(tiny_market / "bounding_box_train"), loader=LoaderSettings(batch_size=4, num_instances=2, num_workers=0)
    )
    module.trainer = Trainer()
    with pytest.raises(DataError, match=r"6 identities are fewer than the 2 per PK batch .* x 4 processes"):
        module.setup("fit")


@pytest.mark.parametrize("pipeline", ["workers", "cached"])
@pytest.mark.parametrize("flip, erase", [(1.0, 0.0), (0.0, 1.0)])
def test_flip_and_erase_probabilities_reach_both_pipelines_unswapped(tiny_market, tmp_path, pipeline, flip, erase):
    """dataset.prob (flip) and dataset.re_prob (erasing), unequal, from the spec to each pipeline's images."""
    from reid_tao.builders import build_datamodule, load_experiment
    from reid_tao.data.datasets import load_rgb

    from helpers import tiny_overrides

    config = load_experiment(
        None,
        tiny_overrides(
            tiny_market,
            tmp_path,
            **{"dataset.prob": flip, "dataset.re_prob": erase, "dataset.padding": 0, "dataset.pipeline": pipeline},
        ),
    )
    datamodule = build_datamodule(config, with_validation=False)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert datamodule.train_pipeline.name == pipeline
    images = datamodule.train_pipeline.on_after_batch_transfer(batch, 0).images
    plain = torch.stack(
        [datamodule.eval_transform(load_rgb(datamodule.train_records[i].path)) for i in batch.indices.tolist()]
    )
    expected = plain.flip(3) if flip else plain  # no padding: a flip is the only change...
    erased = ~torch.isclose(images, expected, atol=1e-5).all(dim=1)  # ...besides erased (zeroed) pixels
    if erase:
        assert erased.flatten(1).any(dim=1).all() and torch.all(images.masked_select(erased.unsqueeze(1)) == 0)
    else:
        assert not erased.any()
    assert not torch.allclose(plain, plain.flip(3), atol=1e-5)  # the images are not mirror-symmetric
