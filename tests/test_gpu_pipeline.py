"""The "cached" training data path on CPU: cache == CPU resize, augmentation == torchvision in values and
distributions, determinism, data-module integration and an end-to-end `reid train`."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from reid_tao.cli import main
from reid_tao.data.cached_pipeline import (
    AugmentParams,
    DecodedImageCache,
    DeviceAugment,
    IndexDataset,
    augment_batch,
    batch_generator,
    collate_index_batch,
    decode_threads,
    resolve_pipeline,
)
from reid_tao.data.datamodule import AugmentSettings, LoaderSettings, Preprocessing, ReidDataModule
from reid_tao.data.datasets import load_rgb
from reid_tao.data.transforms import build_eval_transform
from reid_tao.errors import DataError

from helpers import tiny_overrides

MEAN, STD = [0.485, 0.456, 0.406], [0.226, 0.225, 0.229]


def write_images(folder, sizes, seed=0):
    """Random-noise JPEGs (plus one grayscale PNG) of various sizes; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for n, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"{n:04d}_c1s1_{n:06d}_00.jpg"
        Image.fromarray(pixels).save(path, quality=85)
        paths.append(str(path))
    gray = folder / "gray.png"
    Image.fromarray(rng.integers(0, 256, (50, 23), dtype=np.uint8), mode="L").save(gray)
    return paths + [str(gray)]


def torchvision_reference(
    image: torch.Tensor, flip: bool, top: int, left: int, padding: int, erase_box=None
) -> torch.Tensor:
    """The CPU path's steps with given random draws, on a PIL image (as the CPU loader runs them)."""
    pil = TF.to_pil_image(image)
    if flip:
        pil = TF.hflip(pil)
    height, width = image.shape[1:]
    if padding:
        pil = TF.crop(TF.pad(pil, padding), top, left, height, width)
    out = TF.normalize(TF.to_tensor(pil), MEAN, STD)
    if erase_box is not None:
        out = TF.erase(out, *erase_box, v=torch.tensor([0.0])[:, None, None])
    return out


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), [(40, 20), (64, 30), (17, 9), (32, 16), (128, 64)])


# -- cache ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_cache_equals_cpu_path_resize_exactly(image_files, interpolation):
    cache = DecodedImageCache.build(image_files, (32, 16), interpolation, num_threads=3)
    assert cache.images.shape == (len(image_files), 3, 32, 16) and cache.images.dtype == torch.uint8
    assert cache.placement == "host" and cache.nbytes == len(image_files) * 3 * 32 * 16
    resize = T.Resize((32, 16), interpolation=T.InterpolationMode(interpolation))
    for index, path in enumerate(image_files):
        expected = TF.pil_to_tensor(resize(load_rgb(path)))
        assert torch.equal(cache.images[index], expected), path
    # and with flip/crop/erasing off, the augmentation equals the CPU eval transform bit for bit
    evaluate = build_eval_transform((32, 16), MEAN, STD, interpolation)
    plain = DeviceAugment(MEAN, STD, flip_prob=0.0, padding=0, erase_prob=0.0)
    batch = plain(cache.gather(torch.arange(len(image_files))), torch.Generator().manual_seed(0))
    for index, path in enumerate(image_files):
        assert torch.equal(batch[index], evaluate(load_rgb(path))), path


def test_cache_gather_and_corrupt_image(image_files, tmp_path):
    cache = DecodedImageCache.build(image_files, (24, 12), num_threads=2)
    picked = cache.gather(torch.tensor([3, 0, 3]))
    assert torch.equal(picked[0], cache.images[3]) and torch.equal(picked[1], cache.images[0])
    broken = tmp_path / "0001_c1s1_000001_00.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*0001_c1s1_000001_00.jpg"):
        DecodedImageCache.build(image_files + [str(broken)], (24, 12), num_threads=2)


# -- augmentation values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_apply_equals_torchvision_steps_for_the_same_draws(channels_last):
    generator = torch.Generator().manual_seed(3)
    batch, height, width, padding = 8, 20, 12, 3
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)
    augment = DeviceAugment(MEAN, STD, padding=padding, channels_last=channels_last)
    params = AugmentParams(
        flip=torch.tensor([0, 1, 0, 1, 1, 0, 1, 0], dtype=torch.bool),
        offsets=torch.tensor([[0, 0], [6, 6], [3, 3], [0, 6], [6, 0], [1, 5], [2, 4], [5, 2]]),
        erase=torch.tensor([1, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool),
        boxes=torch.tensor(
            [
                [0, 0, 5, 3],
                [15, 9, 5, 3],
                [2, 2, 4, 4],
                [0, 0, 1, 1],
                [3, 1, 12, 10],
                [19, 11, 1, 1],
                [0, 0, 3, 3],
                [7, 4, 2, 6],
            ]
        ),
    )
    out = augment.apply(images, params)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    overridden = augment.apply(images, params, channels_last=not channels_last)  # per-call override
    assert torch.equal(overridden, out)
    assert overridden.is_contiguous(memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    for b in range(batch):
        box = params.boxes[b].tolist() if params.erase[b] else None
        expected = torchvision_reference(images[b], bool(params.flip[b]), *params.offsets[b].tolist(), padding, box)
        assert torch.equal(out[b], expected), b


def test_sampled_boxes_and_offsets_stay_in_range():
    augment = DeviceAugment(MEAN, STD, padding=4, erase_prob=1.0)
    params = augment.sample_params(5000, 32, 16, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert params.offsets.min() == 0 and params.offsets.max() == 8
    top, left, h, w = params.boxes[params.erase].unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 16).all()
    assert (h < 32).all() and (w < 16).all() and (h > 0).all() and (w > 0).all()


# -- augmentation distributions -----------------------------------------------------------------------------
def test_flip_rate_and_crop_offsets_are_uniform():
    n, padding = 20000, 10
    for prob in (0.0, 0.3, 0.5, 1.0):
        augment = DeviceAugment(MEAN, STD, flip_prob=prob, padding=padding)
        params = augment.sample_params(n, 256, 128, torch.device("cpu"), torch.Generator().manual_seed(7))
        assert abs(params.flip.float().mean().item() - prob) < 0.015, prob
    counts = torch.bincount(params.offsets.reshape(-1), minlength=2 * padding + 1).float()
    assert counts.numel() == 2 * padding + 1  # 0..2*padding, as Pad + RandomCrop
    expected = 2 * n / (2 * padding + 1)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 50  # 20 degrees of freedom: p < 1e-3 for a uniform draw
    # top and left offsets are independent
    assert abs(np.corrcoef(params.offsets[:, 0].numpy(), params.offsets[:, 1].numpy())[0, 1]) < 0.05


def torchvision_erasing_draws(n: int, height: int, width: int):
    """(erased, area fraction, aspect) of n torchvision RandomErasing(p=1) parameter draws."""
    torch.manual_seed(11)
    image = torch.zeros(3, height, width)
    erased, fractions, aspects = [], [], []
    for _ in range(n):
        _, _, h, w, v = T.RandomErasing.get_params(image, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=[0.0])
        hit = v is not image
        erased.append(hit)
        if hit:
            fractions.append(h * w / (height * width))
            aspects.append(h / w)
    return np.array(erased), np.array(fractions), np.array(aspects)


@pytest.mark.parametrize("height,width", [(256, 128), (12, 6)])
def test_erasing_matches_torchvision_distribution(height, width):
    n = 4000
    tv_erased, tv_fraction, tv_aspect = torchvision_erasing_draws(n, height, width)
    augment = DeviceAugment(MEAN, STD, erase_prob=1.0)
    params = augment.sample_params(n, height, width, torch.device("cpu"), torch.Generator().manual_seed(5))
    _, _, h, w = params.boxes[params.erase].double().unbind(1)
    fraction, aspect = (h * w / (height * width)).numpy(), (h / w).numpy()
    # how often no box fits in 10 attempts (frequent on tiny images) matches too
    assert abs(params.erase.float().mean().item() - tv_erased.mean()) < 0.03
    if height == 256:
        assert fraction.min() > 0.018 and fraction.max() < 0.41  # 0.02-0.4 up to rounding of the sides
        assert abs(fraction.mean() - tv_fraction.mean()) < 0.01
        assert abs(np.median(fraction) - np.median(tv_fraction)) < 0.015
        assert abs(np.log(aspect).mean() - np.log(tv_aspect).mean()) < 0.06
        # same fraction histogram (10 bins over 0.02..0.4)
        bins = np.linspace(0.0, 0.42, 11)
        ours, _ = np.histogram(fraction, bins)
        theirs, _ = np.histogram(tv_fraction, bins)
        assert np.abs(ours / ours.sum() - theirs / theirs.sum()).max() < 0.025
    else:
        assert abs(fraction.mean() - tv_fraction.mean()) < 0.03


@pytest.mark.parametrize("erase_prob", [0.5, 0.2, 0.85])
def test_erase_probability_and_erased_pixels_are_mean_coloured(erase_prob):
    augment = DeviceAugment(MEAN, STD, flip_prob=0.0, padding=0, erase_prob=erase_prob)
    images = torch.full((2000, 3, 16, 8), 200, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(2))
    erased_pixels = (out == 0).all(dim=1)  # 200/255 is not the mean in any channel: 0 only where erased
    rate = erased_pixels.flatten(1).any(dim=1).float().mean().item()
    assert abs(rate - erase_prob) < 0.04


# -- determinism -----------------------------------------------------------------------------------------------
def test_same_seed_same_augmentation_regardless_of_global_rng():
    augment = DeviceAugment(MEAN, STD, padding=3)
    images = torch.randint(0, 256, (16, 3, 20, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = augment(images, batch_generator(123, 0, images.device))
    torch.manual_seed(999)
    assert torch.equal(first, augment(images, batch_generator(123, 0, images.device)))
    assert not torch.equal(first, augment(images, batch_generator(124, 0, images.device)))
    assert not torch.equal(first, augment(images, batch_generator(123, 1, images.device)))  # ranks differ


def test_index_loader_collates_batch_seed():
    dataset = IndexDataset([5, 6, 7], [1, 2, 1])
    batch = collate_index_batch([dataset[(2, 41)], dataset[(0, 42)]])
    assert batch.indices.tolist() == [2, 0] and batch.pids.tolist() == [7, 5] and batch.camids.tolist() == [1, 1]
    assert batch.seed == 41 and isinstance(batch.seed, int)


def test_resolve_pipeline():
    assert resolve_pipeline("workers") == "workers" and resolve_pipeline("cached") == "cached"
    assert resolve_pipeline("auto", torch.device("cpu")) == "workers"  # cache size unknown
    assert resolve_pipeline("auto", torch.device("cuda", 0)) == "cached"
    # on a CPU the decoded cache is chosen when it fits in half of the available memory
    gib = 2**30
    assert resolve_pipeline("auto", torch.device("cpu"), cache_bytes=4 * gib, available_bytes=8 * gib) == "cached"
    assert resolve_pipeline("auto", torch.device("cpu"), cache_bytes=5 * gib, available_bytes=8 * gib) == "workers"
    assert resolve_pipeline("workers", torch.device("cpu"), cache_bytes=1, available_bytes=8 * gib) == "workers"
    with pytest.raises(ValueError, match="pipeline='fast'"):
        resolve_pipeline("fast")


@pytest.mark.parametrize("old, new", [("gpu", "cached"), ("cpu", "workers")])
def test_the_old_pipeline_names_are_read_as_the_new_ones(old, new, tmp_path):
    """dataset.pipeline=gpu meant the decoded-image cache (on a CPU too), cpu the loader workers: a spec or an
    override with the old name loads with the new one, and help shows both."""
    from reid_tao.builders import resolve_choices
    from reid_tao.config.catalog import allowed_text, find_field
    from reid_tao.config.loader import load_config

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset:\n  pipeline: {old}\n")
    assert load_config(str(spec)).dataset.pipeline == new
    assert load_config(None, [f"dataset.pipeline={old}"]).dataset.pipeline == new
    assert load_config(None, [f"dataset.pipeline={new}"]).dataset.pipeline == new
    assert "(old names: 'gpu' = 'cached', 'cpu' = 'workers')" in allowed_text(
        find_field("dataset.pipeline").meta, resolve_choices
    )


# -- data-module integration ------------------------------------------------------------------------------------
def fake_trainer(training=True, rank=0, epoch=0, device="cpu", num_devices=1):
    # world_size stays 1 (the tiny set has too few identities for several PK plans); num_devices is per node
    return SimpleNamespace(
        training=training,
        global_rank=rank,
        world_size=1,
        current_epoch=epoch,
        num_devices=num_devices,
        fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=epoch))),
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )


def make_module(market, pipeline, trainer=None, **augment):
    module = ReidDataModule(
        str(market / "bounding_box_train"),
        pipeline=pipeline,
        preprocessing=Preprocessing((32, 16), MEAN, STD),
        augment=AugmentSettings(**{"padding": 2, **augment}),
        loader=LoaderSettings(batch_size=8, num_instances=2, num_workers=0, seed=3),
    )
    module.trainer = trainer or fake_trainer()
    module.setup("fit")
    return module


def test_datamodule_cached_pipeline_same_batches_as_workers(tiny_market):
    cpu = make_module(tiny_market, "workers")
    gpu = make_module(tiny_market, "cached")
    cpu_batches = list(cpu.train_dataloader())
    index_batches = list(gpu.train_dataloader())
    assert len(index_batches) == len(cpu_batches) > 0
    cache = gpu.train_pipeline.image_cache
    assert cache is not None and len(cache) == len(gpu.train_records)
    for (_, labels, camids, indices), raw in zip(cpu_batches, index_batches):
        assert torch.equal(raw.indices, indices) and torch.equal(raw.pids, labels) and torch.equal(raw.camids, camids)
        images, out_labels, out_camids, out_indices = gpu.on_after_batch_transfer(raw, 0)
        assert images.shape == (8, 3, 32, 16) and images.dtype == torch.float32
        assert torch.equal(out_labels, labels) and torch.equal(out_indices, indices)
    # validation (trainer not training) batches pass through untouched
    gpu.trainer = fake_trainer(training=False)
    assert gpu.on_after_batch_transfer(index_batches[0], 0) is index_batches[0]


def test_datamodule_without_augmentation_equals_eval_transform(tiny_market):
    module = make_module(tiny_market, "cached", flip_prob=0.0, padding=0, erase_prob=0.0)
    raw = next(iter(module.train_dataloader()))
    images = module.on_after_batch_transfer(raw, 0)[0]
    for image, index in zip(images, raw.indices.tolist()):
        assert torch.equal(image, module.eval_transform(load_rgb(module.train_records[index].path)))


def test_datamodule_augmentation_replays_per_epoch(tiny_market):
    def epoch_images(epoch):
        module = make_module(tiny_market, "cached")
        module.trainer = fake_trainer(epoch=epoch)
        loader = module.train_dataloader()
        pipeline = module.train_pipeline
        return [augment_batch(raw, pipeline.image_cache, pipeline.augment).images for raw in loader]

    first, again, other = epoch_images(2), epoch_images(2), epoch_images(3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.slow
def test_reid_train_with_cached_pipeline_on_cpu_and_resume(tiny_market, tmp_path, capsys):
    """End to end with validation each epoch; interrupted + resumed equals uninterrupted."""

    def train(results, epochs):
        code = main(
            ["train"]
            + tiny_overrides(tiny_market, results, **{"dataset.pipeline": "cached", "train.num_epochs": epochs})
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    out = train(tmp_path / "full", 2)
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "val (plain) mAP" in lines[1]  # validation batches went through untouched
    train(tmp_path / "split", 1)  # interrupted after epoch 1 ...
    assert "resuming from" in train(tmp_path / "split", 2)  # ... and resumed automatically
    full = torch.load(tmp_path / "full/train/reid_model_latest.pth", weights_only=True)
    split = torch.load(tmp_path / "split/train/reid_model_latest.pth", weights_only=True)
    assert full["epoch"] == split["epoch"] == 1
    for key, value in full["state_dict"].items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, key
        assert torch.equal(value, split["state_dict"][key]), key


# -- no per-step host syncs; cache threads per local process ---------------------------------------------------
def test_host_cache_gathers_with_the_host_copy_of_the_indices(image_files, monkeypatch):
    """A cache kept in host memory must not copy the step's indices back from the device (a sync per step)."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    cache = DecodedImageCache.build(image_files, (24, 12), num_threads=2)
    dataset = IndexDataset([0] * len(image_files), [1] * len(image_files))
    batch = collate_index_batch([dataset[(3, 7)], dataset[(0, 8)], dataset[(3, 9)]])
    expected = cache.images[torch.tensor([3, 0, 3])]
    assert torch.equal(cache.gather_on_host(torch.from_numpy(batch.host_indices)), expected)
    # Lightning's transfer (here to "meta", standing in for a GPU) moves the indices, not their host copy
    moved = move_data_to_device(batch, torch.device("meta"))
    assert moved.indices.device.type == "meta" and moved.host_indices is batch.host_indices
    cache._placed_for = torch.device("meta")  # as place_for leaves a cache too big for the device: on the host
    copies, real_cpu = [], torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(self.device)
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    out = cache.gather(moved.indices, moved.host_indices)
    assert copies == [] and out.device.type == "meta" and out.shape == expected.shape
    # and the device pipeline hands the host copy to the cache
    seen = []
    real_gather = DecodedImageCache.gather
    monkeypatch.setattr(DecodedImageCache, "gather", lambda self, i, h=None: seen.append(h) or real_gather(self, i, h))
    cache._placed_for = None
    augment_batch(batch, cache, DeviceAugment(MEAN, STD))
    assert seen and seen[0] is batch.host_indices


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_index_batches_are_pinned_when_training_on_cuda(tiny_market, device, pinned):
    module = make_module(tiny_market, "cached", trainer=fake_trainer(device=device))
    assert module.train_dataloader().pin_memory is pinned


def test_cache_decode_threads_share_the_affinity_set_between_local_processes(tiny_market, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert [decode_threads(n) for n in (1, 2, 5, 24)] == [12, 6, 2, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert decode_threads() == 32 and decode_threads(8) == 12
    built, real_build = [], DecodedImageCache.build
    monkeypatch.setattr(
        DecodedImageCache,
        "build",
        classmethod(lambda cls, *args, **kwargs: built.append(kwargs["num_threads"]) or real_build(*args, **kwargs)),
    )
    make_module(tiny_market, "cached", trainer=fake_trainer(num_devices=4)).train_dataloader()
    assert built == [24]  # 96 CPUs shared by the 4 processes of this node


def test_auto_pipeline_on_cpu_takes_the_cache_when_it_fits_and_says_so(tiny_market, monkeypatch, caplog):
    from reid_tao.data import cached_pipeline
    from reid_tao.data.pipelines import DevicePipeline, WorkerPipeline

    def chosen(available, processes=1):
        monkeypatch.setattr(cached_pipeline, "available_memory_bytes", lambda: available)
        module = ReidDataModule(
            str(tiny_market / "bounding_box_train"),
            pipeline="auto",
            loader=LoaderSettings(batch_size=4, num_instances=2),
            preprocessing=Preprocessing((32, 16), (0.5,) * 3, (0.5,) * 3),
        )
        module.setup("fit")
        module.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device("cpu")), num_devices=processes
        )
        caplog.clear()
        with caplog.at_level("INFO"):
            pipeline = module._make_train_pipeline()
        lines = [r.getMessage() for r in caplog.records if "dataset.pipeline=auto" in r.getMessage()]
        assert len(lines) == 1
        return pipeline, lines[0]

    need = 36 * 32 * 16 * 3  # 36 training images at 32x16
    pipeline, line = chosen(available=2 * need)
    assert isinstance(pipeline, DevicePipeline) and "decoded-image cache" in line
    pipeline, line = chosen(available=2 * need, processes=2)  # one cache per process of this machine
    assert isinstance(pipeline, WorkerPipeline) and "would not fit" in line
