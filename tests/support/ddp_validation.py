"""`trainer.validate` of an untrained tiny model in one or several CPU processes (gloo, Lightning's DDP
launcher re-runs this script per rank). Each rank writes rank<N>.json: the logged validation metrics and
the (rows, columns) of every query-gallery distance matrix it computed. Used by test_distributed.py.

    python tests/support/ddp_validation.py OUT_DIR DEVICES OVERRIDE...
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import tiny_backbone

from reid_tao.builders import build_datamodule, build_module, load_experiment
from reid_tao.evaluation import query_share


def validate(overrides, devices: int) -> dict:
    config = load_experiment(None, overrides)
    pl.seed_everything(0, verbose=False)  # the same weights on every rank (validate does not broadcast them)
    datamodule = build_datamodule(config)
    datamodule.setup("validate")
    module = build_module(
        config, datamodule.num_classes, num_query=len(datamodule.query_records), load_pretrained=False
    )
    shapes, real = [], query_share.pairwise_distance

    def recording(query_features, gallery_features):
        shapes.append([len(query_features), len(gallery_features)])
        return real(query_features, gallery_features)

    query_share.pairwise_distance = recording
    try:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        query_share.pairwise_distance = real
    return {
        "rank": trainer.global_rank,
        "shapes": shapes,
        "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
    }


if __name__ == "__main__":
    tiny_backbone.register()  # the model of tiny_overrides
    out_dir, devices, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    result = validate(overrides, devices)
    (out_dir / f"rank{result['rank']}.json").write_text(json.dumps(result))
