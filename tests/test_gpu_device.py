"""What only a CUDA GPU can check (marked ``gpu``: skipped without one, run by the device check's
``gpu_tests`` step): on-device augmentation equal to the CPU path, the pinned-host cache fallback, short
CUDA fits in bf16 with channels_last and in fp16 with the manual center-loss step."""

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from torch import nn

from reid_tao.cli import main
from reid_tao.data.cached_pipeline import (
    AugmentParams,
    DecodedImageCache,
    DeviceAugment,
    IndexDataset,
    augment_batch,
    collate_index_batch,
)
from reid_tao.engine.module import ReidModule

from helpers import make_market, tiny_overrides

pytestmark = pytest.mark.gpu

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CUDA = torch.device("cuda", 0)


def random_params(batch: int, height: int, width: int, padding: int, seed: int) -> AugmentParams:
    """Draws on the CPU (the same for both devices), every case present: flips, crops at all offsets, boxes."""
    return DeviceAugment(MEAN, STD, padding=padding, erase_prob=0.7).sample_params(
        batch, height, width, torch.device("cpu"), torch.Generator().manual_seed(seed)
    )


def on(device: torch.device, params: AugmentParams) -> AugmentParams:
    return AugmentParams(*(getattr(params, name).to(device) for name in ("flip", "offsets", "erase", "boxes")))


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_augmentation_on_cuda_equals_the_cpu_path(channels_last):
    """Same draws, same uint8 images: the CUDA kernels pick the CPU path's pixels (flip, pad + crop) and erase
    the same boxes exactly, and normalise to the same values up to float rounding (a kernel may divide by 255
    as a multiplication by 1/255: one ulp, ~2e-7 here; a wrong pixel would differ by > 0.01), in the asked
    memory format."""
    batch, height, width, padding = 64, 256, 128, 10
    images = torch.randint(
        0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    params = random_params(batch, height, width, padding, seed=1)
    assert params.flip.any() and params.erase.any() and not params.erase.all()
    augment = DeviceAugment(MEAN, STD, padding=padding, channels_last=channels_last)
    expected = augment.apply(images, params)
    out = augment.apply(images.to(CUDA), on(CUDA, params))
    assert out.is_cuda and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_same_images(out, expected)


def assert_same_images(out: torch.Tensor, expected: torch.Tensor) -> None:
    out = out.cpu()
    assert torch.equal(out == 0, expected == 0)  # erased pixels are exactly 0 (padding normalises to -mean/std)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_draws_on_cuda_follow_the_cpu_distributions():
    """The CUDA generator draws other numbers than the CPU one; their distributions must be the same."""
    n, height, width, padding = 20000, 256, 128, 10
    augment = DeviceAugment(MEAN, STD, flip_prob=0.5, padding=padding, erase_prob=0.5)
    cuda = augment.sample_params(n, height, width, CUDA, torch.Generator(device=CUDA).manual_seed(3))
    cpu = augment.sample_params(n, height, width, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert cuda.flip.is_cuda and cuda.boxes.is_cuda
    for name in ("flip", "erase"):
        assert abs(getattr(cuda, name).float().mean().item() - getattr(cpu, name).float().mean().item()) < 0.02, name
    assert cuda.offsets.min().item() == 0 and cuda.offsets.max().item() == 2 * padding
    top, left, box_h, box_w = cuda.boxes[cuda.erase].cpu().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + box_h <= height).all() and (left + box_w <= width).all()
    fraction = (box_h * box_w).double() / (height * width)
    cpu_boxes = cpu.boxes[cpu.erase].double()
    cpu_fraction = cpu_boxes[:, 2] * cpu_boxes[:, 3] / (height * width)
    assert abs(fraction.mean().item() - cpu_fraction.mean().item()) < 0.01


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(24):
        path = folder / f"{index:04d}_c1s1_{index:06d}_00.jpg"
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def index_batch(indices):
    dataset = IndexDataset([0] * 24, [1] * 24)
    return collate_index_batch([dataset[(index, 5)] for index in indices])


@pytest.mark.parametrize("max_device_fraction, placement", [(0.25, "device"), (0.0, "pinned")])
def test_cache_on_the_gpu_or_pinned_on_the_host_gives_the_cpu_batch(
    jpeg_files, monkeypatch, max_device_fraction, placement
):
    """A cache that fits goes to the GPU; one that does not (here: a 0% share of the free memory) stays in
    pinned host memory and gathers with the host copy of the indices (no device-to-host copy), and both give
    the CPU path's augmented batch."""
    cpu_cache = DecodedImageCache.build(jpeg_files, (64, 32), num_threads=2)
    cache = DecodedImageCache(cpu_cache.images.clone(), max_device_fraction=max_device_fraction)
    augment = DeviceAugment(MEAN, STD, padding=3)
    batch = index_batch([5, 0, 23, 5, 7, 11, 2, 19])
    expected = augment_batch(batch, cpu_cache, augment).images
    copies, real_cpu = [], torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(self.device)
        return real_cpu(self, *args, **kwargs)

    moved = move_data_to_device(batch, CUDA)  # as Lightning moves it: the host copy stays on the host
    assert moved.indices.is_cuda and moved.host_indices is batch.host_indices
    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    images = cache.gather(moved.indices, moved.host_indices)
    monkeypatch.undo()
    assert cache.placement == placement and images.is_cuda
    assert [device for device in copies if device.type == "cuda"] == []
    assert torch.equal(images.cpu(), cpu_cache.images[torch.from_numpy(batch.host_indices)])
    out = augment_batch(moved, cache, augment)  # the CUDA generator's draws: compare one without randomness
    assert out.images.is_cuda and out.images.shape == expected.shape
    plain = DeviceAugment(MEAN, STD, flip_prob=0.0, padding=0, erase_prob=0.0)
    assert_same_images(augment_batch(moved, cache, plain).images, augment_batch(batch, cpu_cache, plain).images)


# -- short CUDA fits through `reid train` -------------------------------------------------------------------------
class Recorder:
    """What `reid train` did on the device: per training step the batch's device, dtype, memory format and the
    autocast in force; at the start the model's memory format, the precision and its GradScaler; the centers
    and weights before and after."""

    def __init__(self, monkeypatch):
        import pytorch_lightning as pl

        from reid_tao.tasks import train as train_task

        self.steps, self.start, self.end = [], {}, {}
        recorder = self

        class Probe(pl.Callback):
            def on_train_start(self, trainer, module):
                conv = next(m for m in module.model.modules() if isinstance(m, nn.Conv2d))
                scaler = getattr(trainer.precision_plugin, "scaler", None)
                recorder.start = {
                    "precision": trainer.precision,
                    "scale": scaler.get_scale() if scaler else None,
                    "conv_channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last),
                    "centers": [c.detach().clone() for c in module.loss.center_parameters()],
                    "weights": {n: p.detach().clone() for n, p in module.model.named_parameters()},
                }

            def on_train_end(self, trainer, module):
                recorder.end = {
                    "centers": [c.detach().clone() for c in module.loss.center_parameters()],
                    "weights": {n: p.detach().clone() for n, p in module.model.named_parameters()},
                }

        real_step = ReidModule.training_step

        def recording_step(module, batch, batch_idx):
            images = batch.images
            kind = images.device.type
            loss = real_step(module, batch, batch_idx)
            recorder.steps.append(
                {
                    "device": kind,
                    "dtype": images.dtype,
                    "channels_last": images.is_contiguous(memory_format=torch.channels_last),
                    "autocast": torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None,
                    "loss": loss.detach().float().cpu(),
                }
            )
            return loss

        build_trainer = train_task.build_trainer
        monkeypatch.setattr(ReidModule, "training_step", recording_step)
        monkeypatch.setattr(
            train_task,
            "build_trainer",
            lambda *args, extra_callbacks=(), **kwargs: build_trainer(
                *args, extra_callbacks=[*extra_callbacks, Probe()], **kwargs
            ),
        )


@pytest.fixture(scope="module")
def five_step_market(tmp_path_factory):
    """10 identities x 2 cameras x 2 images: 5 PK batches of 4 identities x 2 images an epoch."""
    return make_market(tmp_path_factory.mktemp("market5"), train_ids=range(1, 11), per_cam=2, size=(64, 32))


def cuda_fit(market, results, monkeypatch, **overrides) -> Recorder:
    recorder = Recorder(monkeypatch)
    settings = {
        "train.accelerator": "gpu",
        "evaluate.accelerator": "gpu",
        "dataset.pipeline": "cached",
        "train.num_epochs": 1,
        "train.seed": 7,
        "model.input_height": 64,
        "model.input_width": 32,
        "model.metric_loss_type": "triplet_center",
        **overrides,
    }
    assert main(["train", *tiny_overrides(market, results, **settings)]) == 0
    return recorder


def changed_names(before: dict, after: dict) -> list:
    return [name for name in before if not torch.equal(before[name], after[name])]


def test_five_step_cuda_fit_in_bf16_with_channels_last(five_step_market, tmp_path, monkeypatch):
    run = cuda_fit(
        five_step_market, tmp_path, monkeypatch, **{"train.precision": "bf16-mixed", "train.channels_last": True}
    )
    assert run.start["precision"] == "bf16-mixed" and run.start["scale"] is None  # bf16: no loss scaling
    assert run.start["conv_channels_last"]
    assert len(run.steps) == 5
    for step in run.steps:
        assert step["device"] == "cuda" and step["dtype"] == torch.float32 and step["channels_last"], step
        assert step["autocast"] == torch.bfloat16 and torch.isfinite(step["loss"]), step
    assert all(torch.isfinite(value).all() for value in run.end["weights"].values())
    changed = changed_names(run.start["weights"], run.end["weights"])
    assert len(changed) > 0.9 * len(run.start["weights"]), "most weights must train"
    assert (tmp_path / "train" / "reid_model_latest.pth").is_file()


def center_shift(run: Recorder) -> float:
    return sum((after - before).norm().item() for before, after in zip(run.start["centers"], run.end["centers"]))


def test_fp16_cuda_fit_steps_the_centers_with_the_loss_scale_undone(five_step_market, tmp_path, monkeypatch):
    """The centers step outside the GradScaler (manual optimisation): their gradient must be unscaled by
    hand. Scaled (x 65536 at the start) the centers would move thousands of times as far as in fp32."""
    fp16 = cuda_fit(
        five_step_market, tmp_path / "fp16", monkeypatch, **{"train.precision": "16-mixed", "train.num_epochs": 2}
    )
    assert fp16.start["precision"] == "16-mixed" and fp16.start["scale"] > 1
    assert all(step["autocast"] == torch.float16 for step in fp16.steps) and len(fp16.steps) == 10
    assert all(torch.isfinite(c).all() for c in fp16.end["centers"])
    monkeypatch.undo()
    fp32 = cuda_fit(
        five_step_market, tmp_path / "fp32", monkeypatch, **{"train.precision": "32", "train.num_epochs": 2}
    )
    assert all(step["autocast"] is None for step in fp32.steps)
    assert fp32.start["centers"] and all(
        torch.equal(a, b) for a, b in zip(fp16.start["centers"], fp32.start["centers"])
    )  # same seed
    ratio = center_shift(fp16) / center_shift(fp32)
    assert center_shift(fp32) > 0 and 0.25 < ratio < 4, ratio
