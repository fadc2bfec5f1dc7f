"""A `reid train`-like run (tasks.train's Trainer, callbacks and preemption handler) that trains and
validates under DDP in CPU processes (gloo; Lightning's launcher re-runs this script per rank). Each rank
writes rank<N>.json: its own mean step loss, the logged train_loss and validation metrics, the training
steps it ran and the host syncs counted over the fit (tests/support/sync_counter.py). Then, in the same
processes (one launch for two tests: starting processes is most of their time), it runs ddp_validation.py's
`validate` of an untrained model over the ranks and writes validate_rank<N>.json. Used by test_distributed.py.

    python tests/support/ddp_training.py OUT_DIR OVERRIDE...
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import tiny_backbone
import torch
from ddp_validation import validate
from sync_counter import HostSyncCounter

from reid_tao.builders import build_datamodule, build_module, build_trainer, load_experiment
from reid_tao.engine.checkpoint import LATEST_NAME
from reid_tao.engine.preemption import PreemptionCheckpoint


class StepLosses(pl.Callback):
    """This rank's own step losses (equal batch sizes on every rank: the global mean is the mean of ranks)."""

    def __init__(self):
        self.losses, self.steps = [], 0

    def on_train_epoch_start(self, trainer, module):
        self.losses = []  # the logged train_loss is the last epoch's mean

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        self.steps += 1


def train(out_dir: Path, overrides) -> dict:
    config = load_experiment(None, overrides)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    module = build_module(
        config, datamodule.num_classes, num_query=len(datamodule.query_records), load_pretrained=False
    )
    results = Path(config.results_dir) / "train"
    results.mkdir(parents=True, exist_ok=True)
    preemption, steps = PreemptionCheckpoint(results / f"{LATEST_NAME}.pth"), StepLosses()
    trainer = build_trainer(config, results, datamodule.has_validation, extra_callbacks=[preemption, steps])
    with preemption.catching_signals(), HostSyncCounter() as syncs:
        trainer.fit(module, datamodule=datamodule)
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "steps": steps.steps,
        "epochs": trainer.current_epoch,
        "own_last_epoch_loss": sum(steps.losses) / len(steps.losses),
        "check_every": preemption.check_every,
        "syncs_by_source": dict(syncs.sources),
        "syncs_by_op": dict(syncs.ops),
        "metrics": {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        },
    }


if __name__ == "__main__":
    tiny_backbone.register()  # the model of tiny_overrides
    out_dir = Path(sys.argv[1])
    result = train(out_dir, sys.argv[2:])
    (out_dir / f"rank{result['rank']}.json").write_text(json.dumps(result))
    # the process group stays set up and LOCAL_RANK is set: this Trainer joins it, it starts no processes
    checked = validate(sys.argv[2:], devices=result["world_size"])
    (out_dir / f"validate_rank{checked['rank']}.json").write_text(json.dumps(checked))
