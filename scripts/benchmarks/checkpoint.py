"""checkpoint: one epoch-end checkpoint write, in the training thread vs from a background thread."""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import MARKET_IDS, chosen_device, sync


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backbone", default="resnet_50", help="model.backbone")
    parser.add_argument("--feat-dim", type=int, default=2048, help="model.feat_dim (the BoT recipe's 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed writes of each kind (fastest reported)")
    parser.add_argument("--dir", default=None, help="folder to write in (default: the system temp folder)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """How long training waits for one epoch-end checkpoint of the BoT ResNet50 (model, Adam state, 751 x 2048
    centers): written in the training thread (AtomicCheckpointIO, as training once did) and from a host snapshot
    in a background thread (BackgroundCheckpointIO, what `reid train` uses). A shared disk makes these noisy."""
    import tempfile
    from pathlib import Path

    import torch

    from reid_tao.builders import build_model, load_experiment
    from reid_tao.engine.checkpoint import AtomicCheckpointIO, BackgroundCheckpointIO

    device = chosen_device(args.device)
    config = load_experiment(
        None, ["model.pretrain_choice=''", f"model.backbone={args.backbone}", f"model.feat_dim={args.feat_dim}"]
    )
    model = build_model(config, MARKET_IDS, load_pretrained=False).to(device)
    centers = torch.zeros(MARKET_IDS, model.feat_dim, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([*model.parameters(), centers])
    for parameter in optimizer.param_groups[0]["params"]:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # creates the Adam moments: the checkpoint holds three copies of the weights
    checkpoint = {
        "state_dict": {**model.state_dict(), "loss.center_loss.centers": centers.detach()},
        "optimizer_states": [optimizer.state_dict()],
    }
    report: dict[str, Any] = {
        "task": "checkpoint",
        "device": str(device),
        "backbone": args.backbone,
        "feat_dim": model.feat_dim,
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "reid_model_latest.pth"
        for name, io in (("foreground", AtomicCheckpointIO()), ("background", BackgroundCheckpointIO())):
            blocked, total = [], []
            for _ in range(args.repeats):
                sync(device)
                start = time.perf_counter()
                io.save_checkpoint(checkpoint, path)
                blocked.append(time.perf_counter() - start)
                io.teardown()  # waits for a background write
                total.append(time.perf_counter() - start)
            report[f"{name}_blocks_s"] = round(min(blocked), 3)
            report[f"{name}_total_s"] = round(min(total), 3)
        report["size_mb"] = round(path.stat().st_size / 2**20, 1)
    return report
