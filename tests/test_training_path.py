"""The training path's GPU-facing decisions, checked on the CPU: host syncs per step, gradient clipping
under a fp16 loss scale, where compile/memory format are applied, per-rank seeds, precision and cuDNN
choices."""

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from sync_counter import HostSyncCounter

from reid_tao.builders import build_datamodule, build_module, load_experiment
from reid_tao.engine.callbacks import StepLossBar
from reid_tao.engine.module import epoch_seed

from helpers import tiny_overrides


def tiny_setup(market, tmp_path, **extra):
    config = load_experiment(
        None,
        tiny_overrides(
            market,
            tmp_path,
            **{
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
                "dataset.pipeline": "gpu",
                **extra,
            },
        ),
    )
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    return config, datamodule, build_module(config, datamodule.num_classes)


def quiet_trainer(**kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class StepCounter(pl.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, *args):
        self.steps += 1


def test_host_syncs_per_step_are_only_the_progress_bar_redraws(tiny_market, tmp_path):
    """Counted at the dispatcher (tests/support/sync_counter.py), so boolean-mask indexing (nonzero inside the kernel,
    e.g. the triplet loss's d_ap[has_negative] and its backward) counts too, not only Tensor.item."""
    _, datamodule, module = tiny_setup(
        tiny_market, tmp_path, **{"dataset.batch_size": 4, "model.with_center_loss": True}
    )
    refresh, counter = 4, StepCounter()
    trainer = quiet_trainer(callbacks=[StepLossBar(refresh_rate=refresh), counter])
    with HostSyncCounter() as syncs:
        trainer.fit(module, datamodule=datamodule)
    assert counter.steps >= 8
    # one read per redraw, plus a fixed few per fit (epoch-end redraw and logging, the loader's seed draw)
    assert syncs.total <= counter.steps // refresh + 6, (syncs.ops, counter.steps)
    assert "train_loss" in trainer.callback_metrics


# -- item: gradient clipping and the center step under a fp16 loss scale ---------------------------------
def fp16_trainer(scale: float, **kwargs):
    from pytorch_lightning.plugins.precision import MixedPrecision

    # A real GradScaler on the CPU with a known scale (CPU autocast runs fp16 too).
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
    return quiet_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], max_steps=1, **kwargs)


class GradNormAtStep(pl.Callback):
    """Records the main optimiser's gradient norm when it steps (after clipping)."""

    def on_train_start(self, trainer, module):
        optimizer = trainer.optimizers[0]
        step = optimizer.step

        def recording_step(*args, **kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            return step(*args, **kwargs)

        optimizer.step = recording_step


def test_grad_clip_applies_to_unscaled_gradients_under_fp16(tiny_market, tmp_path):
    clip = 0.05
    _, datamodule, module = tiny_setup(tiny_market, tmp_path, **{"train.grad_clip": clip})
    recorder = GradNormAtStep()
    fp16_trainer(64.0, callbacks=[recorder]).fit(module, datamodule=datamodule)
    # clipped while scaled, the step would see clip / 64 (random-init gradients overflow fp16 at larger scales)
    assert recorder.norm == pytest.approx(clip, rel=1e-3)


def test_center_step_undoes_the_fp16_loss_scale(tiny_market, tmp_path):
    """The centers step outside the scaler: their gradients must be divided by the loss scale."""

    def center_change(trainer):
        _, datamodule, module = tiny_setup(tiny_market, tmp_path, **{"model.with_center_loss": True})
        before = module.loss.center_loss.centers.detach().clone()
        trainer.fit(module, datamodule=datamodule)
        return module.loss.center_loss.centers.detach() - before

    reference = center_change(quiet_trainer(max_steps=1))  # fp32: no scale
    scaled = center_change(fp16_trainer(64.0))
    assert reference.abs().sum() > 0
    # same step up to fp16 rounding of the features; without the correction it is 64 times larger
    ratio = scaled.norm() / reference.norm()
    assert 0.9 < ratio < 1.1, ratio


# -- item: compile and memory format before the strategy wraps the model ---------------------------------
def test_compile_happens_before_the_strategy_sets_up_the_model(tiny_market, tmp_path, monkeypatch):
    from pytorch_lightning.strategies import SingleDeviceStrategy

    _, datamodule, module = tiny_setup(tiny_market, tmp_path, **{"train.compile": True})
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model.forward)
    seen_at_setup = []
    original_setup = SingleDeviceStrategy.setup

    def recording_setup(strategy, trainer):
        seen_at_setup.append(list(compiled))
        return original_setup(strategy, trainer)

    monkeypatch.setattr(SingleDeviceStrategy, "setup", recording_setup)
    quiet_trainer(max_steps=1).fit(module, datamodule=datamodule)
    assert seen_at_setup == [[module.model]]  # compiled once, before the strategy moved/wrapped it


def test_channels_last_is_applied_in_configure_model_on_cuda_only(tiny_market, tmp_path):
    _, _, module = tiny_setup(tiny_market, tmp_path, **{"train.channels_last": True})
    conv = module.model.backbone.conv1.weight if hasattr(module.model.backbone, "conv1") else None
    conv = conv if conv is not None else next(p for p in module.model.parameters() if p.dim() == 4)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.configure_model()
    assert conv.is_contiguous()
    module._configured_for = None
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 1)))
    module.configure_model()  # decides on the device the strategy will use; moving happens later
    conv = next(p for p in module.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


# -- item: per-epoch seeds differ per rank ----------------------------------------------------------------
def test_epoch_seed_differs_per_rank_and_epoch_and_is_reproducible(tiny_market, tmp_path):
    _, _, module = tiny_setup(tiny_market, tmp_path)

    def draw(rank, epoch):
        module._trainer = SimpleNamespace(global_rank=rank, current_epoch=epoch)
        module.on_train_epoch_start()
        return torch.rand(8)

    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(1, 1))  # dropout/drop-path masks differ across ranks
    assert not torch.equal(draw(0, 1), draw(0, 2))
    assert len({epoch_seed(1234, e, r) for e in range(100) for r in range(64)}) == 6400


# -- item: precision=auto asks the chosen device for native bf16 ----------------------------------------
@pytest.mark.parametrize(
    "capabilities, index, expected",
    [
        ({0: (9, 0)}, 0, "bf16-mixed"),
        ({0: (8, 0)}, 0, "bf16-mixed"),
        ({0: (7, 0)}, 0, "16-mixed"),
        ({0: (7, 5)}, 0, "16-mixed"),  # V100, T4: bf16 only emulated
        ({0: (7, 0), 1: (8, 6)}, 1, "bf16-mixed"),
        ({0: (8, 6), 1: (7, 5)}, 1, "16-mixed"),  # gpu_ids=[1]
    ],
)
def test_auto_precision_uses_the_capability_of_the_chosen_gpu(monkeypatch, capabilities, index, expected):
    from reid_tao.engine.precision import precision_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # says yes when emulated
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[device])
    assert precision_for("auto", "gpu", index) == expected
    assert precision_for("auto", "cpu", None) == "32"
    assert precision_for("16-mixed", "gpu", index) == "16-mixed"


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_cpu_bf16_is_native_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, expected):
    from reid_tao.engine.precision import cpu_has_native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_native_bf16() is expected


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch, tmp_path, tiny_market, caplog, native):
    from reid_tao.builders import trainer
    from reid_tao.engine.devices import DevicePlan

    monkeypatch.setattr(trainer, "plan_devices", lambda *a: DevicePlan("cpu", 1, 1, 1, "auto"))
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(trainer.pl, "Trainer", FakeTrainer)
    config = load_experiment(None, tiny_overrides(tiny_market, tmp_path, **{"train.precision": "bf16-mixed"}))
    with caplog.at_level("INFO"):
        kwargs = trainer.build_trainer(config, tmp_path, has_validation=False).kwargs
    assert kwargs["precision"] == "bf16-mixed"
    warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)


# -- items: sync_bn default and compile warning, cuDNN flags ------------------------------------------
class FakeTrainer:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def fake_gpu_trainer(monkeypatch, tmp_path, tiny_market, caplog, **extra):
    from reid_tao.builders import trainer
    from reid_tao.engine.devices import DevicePlan

    monkeypatch.setattr(trainer, "plan_devices", lambda *a: DevicePlan("gpu", [0, 1], 2, 1, "ddp"))
    monkeypatch.setattr(trainer, "precision_for", lambda requested, accelerator, index: "bf16-mixed")
    monkeypatch.setattr(trainer.pl, "Trainer", FakeTrainer)
    config = load_experiment(None, tiny_overrides(tiny_market, tmp_path, **extra))
    with caplog.at_level("INFO"):
        return trainer.build_trainer(config, tmp_path, has_validation=False).kwargs


def test_sync_bn_is_off_by_default_and_warned_about_with_compile(monkeypatch, tmp_path, tiny_market, caplog):
    assert load_experiment(None).train.sync_bn is False
    assert fake_gpu_trainer(monkeypatch, tmp_path, tiny_market, caplog)["sync_batchnorm"] is False
    caplog.clear()
    kwargs = fake_gpu_trainer(
        monkeypatch, tmp_path, tiny_market, caplog, **{"train.sync_bn": True, "train.compile": True}
    )
    assert kwargs["sync_batchnorm"] is True
    warnings = [r for r in caplog.records if "train.sync_bn with train.compile" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "cudnn, expected",
    [
        ({}, (True, None)),  # GPU default: autotuned kernels
        ({"train.cudnn.deterministic": True}, (False, "warn")),
        ({"train.cudnn.deterministic": True, "train.cudnn.benchmark": True}, (True, "warn")),
    ],
)
def test_cudnn_section_reaches_the_trainer(monkeypatch, tmp_path, tiny_market, caplog, cudnn, expected):
    kwargs = fake_gpu_trainer(monkeypatch, tmp_path, tiny_market, caplog, **cudnn)
    assert (kwargs["benchmark"], kwargs["deterministic"]) == expected


def test_cudnn_flags_on_cpu():
    from omegaconf import OmegaConf

    from reid_tao.builders import cudnn_flags

    assert cudnn_flags(OmegaConf.create({"benchmark": False, "deterministic": False}), "cpu") == (False, None)
    assert cudnn_flags(OmegaConf.create({"benchmark": False, "deterministic": True}), "cpu") == (False, "warn")


# -- validation computes in evaluate.precision, not under the training autocast ---------------------------
@pytest.mark.parametrize("evaluate_precision, expected", [("32", False), ("bf16-mixed", True)])
def test_validation_uses_evaluate_precision_not_the_training_autocast(
    tiny_market, tmp_path, evaluate_precision, expected
):
    config = load_experiment(
        None,
        tiny_overrides(
            tiny_market, tmp_path, **{"train.precision": "bf16-mixed", "evaluate.precision": evaluate_precision}
        ),
    )
    datamodule = build_datamodule(config)
    datamodule.setup("validate")
    module = build_module(
        config, datamodule.num_classes, num_query=len(datamodule.query_records), load_pretrained=False
    )
    seen = []
    module.model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    quiet_trainer(precision="bf16-mixed", limit_val_batches=1.0).validate(module, datamodule=datamodule, verbose=False)
    assert seen and set(seen) == {expected}
