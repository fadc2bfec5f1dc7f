"""Run under torchrun with 2 processes (see test_distributed.py): two DDP training steps for every
dataset.sampler / model.metric_loss_type combination, in one pair of processes.

DDP (find_unused_parameters=False) fails at the second step when a parameter that requires a gradient
got none in the first, e.g. the classifier when no ID loss is used."""

import sys
from pathlib import Path

import pytorch_lightning as pl
import tiny_backbone

from reid_tao.builders import BATCH_RECIPES, METRIC_LOSSES, build_datamodule, build_module, load_experiment
from reid_tao.errors import ConfigError

from helpers import tiny_overrides


def main(market: Path, results: Path) -> None:
    for sampler in BATCH_RECIPES:
        for metric in METRIC_LOSSES:
            overrides = tiny_overrides(
                market,
                results,
                **{
                    "dataset.sampler": sampler,
                    "model.metric_loss_type": metric,
                    "dataset.batch_size": 4,
                    "dataset.query_dataset_dir": "null",
                    "dataset.test_dataset_dir": "null",
                    "dataset.pipeline": "gpu",
                    "train.num_gpus": 2,
                },
            )
            try:
                config = load_experiment(None, overrides)
            except ConfigError:
                continue  # a combination the spec rules refuse (triplet sampler + center only)
            pl.seed_everything(0, verbose=False)
            datamodule = build_datamodule(config)
            module = build_module(config, num_classes=6)
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=2,
                strategy="ddp",
                max_epochs=1,
                limit_train_batches=2,
                limit_val_batches=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                use_distributed_sampler=False,
            )
            trainer.fit(module, datamodule=datamodule)
            assert trainer.global_step >= 2, (sampler, metric)
            if trainer.is_global_zero:
                print(f"trained {sampler} + {metric}", flush=True)


if __name__ == "__main__":
    tiny_backbone.register()  # the model of tiny_overrides
    main(Path(sys.argv[1]), Path(sys.argv[2]))
