"""The training path's GPU-facing decisions, checked on the CPU: host syncs per step, gradient clipping
under a fp16 loss scale, where compile/memory format are applied, per-rank seeds, precision and cuDNN
choices."""
import os
import sys
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from reid_tao.build import build_datamodule, build_module, load_experiment
from reid_tao.engine.callbacks import StepLossBar
from reid_tao.engine.module import ReidModule, epoch_seed

from helpers import tiny_overrides


def tiny_setup(market, tmp_path, **extra):
    config = load_experiment(None, tiny_overrides(market, tmp_path, **{
        "dataset.query_dataset_dir": "null", "dataset.test_dataset_dir": "null", "dataset.pipeline": "gpu",
        **extra}))
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    return config, datamodule, build_module(config, datamodule.num_classes)


def quiet_trainer(**kwargs):
    options = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   use_distributed_sampler=False)
    options.update(kwargs)
    return pl.Trainer(**options)


class StepCounter(pl.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, *args):
        self.steps += 1


def test_step_loss_is_read_back_only_when_the_bar_redraws(tiny_market, tmp_path, monkeypatch):
    _, datamodule, module = tiny_setup(tiny_market, tmp_path, **{"dataset.batch_size": 4})
    reads = []
    original_item = torch.Tensor.item

    def counting_item(tensor):
        # torch's own CPU-side counters (Adam's step count) are not device reads; count everyone else's
        if f"{os.sep}torch{os.sep}" not in sys._getframe(1).f_code.co_filename:
            reads.append(1)
        return original_item(tensor)

    refresh, counter = 4, StepCounter()
    trainer = quiet_trainer(callbacks=[StepLossBar(refresh_rate=refresh), counter])
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    trainer.fit(module, datamodule=datamodule)
    monkeypatch.undo()
    assert counter.steps >= 8
    # one read per redraw (+ the epoch-end redraw and the loader's own seed draw), not one per step
    assert len(reads) <= counter.steps // refresh + 2, (len(reads), counter.steps)
    assert "train/loss" in trainer.callback_metrics
