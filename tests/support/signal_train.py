"""`reid train` that sends itself a real signal at a deterministic point (no timing races), for the
signal tests in test_preemption.py. Lightning's DDP launcher re-runs this script per rank; only rank 0 sends.

    python tests/support/signal_train.py WHERE COUNT SIGNAL TARGET OVERRIDE...

WHERE: step (after the COUNT-th training step), validation (inside the COUNT-th validation step) or
checkpoint (inside the COUNT-th checkpoint write, before the file is written); TARGET: self (this process),
twice (this process, two signals in a row) or group (its whole process group, what SLURM and Ctrl-C do).
Everything else is the production path.
"""

import os
import sys

import tiny_backbone

from reid_tao.cli import main
from reid_tao.engine.checkpoint import BackgroundCheckpointIO
from reid_tao.engine.module import ReidModule

WHERE, COUNT, SIGNUM, TARGET = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tiny_backbone.register()  # the model of tiny_overrides
calls = [0]


def send() -> None:
    calls[0] += 1
    if calls[0] != COUNT or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    if TARGET == "group":
        os.killpg(os.getpgid(0), SIGNUM)
    else:
        for _ in range(2 if TARGET == "twice" else 1):
            os.kill(os.getpid(), SIGNUM)


def patch(owner, name: str, after: bool) -> None:
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        if not after:
            send()
        result = original(*args, **kwargs)
        if after:
            send()
        return result

    setattr(owner, name, patched)


if WHERE == "step":
    patch(ReidModule, "training_step", after=True)
elif WHERE == "validation":
    patch(ReidModule, "validation_step", after=False)
elif WHERE == "checkpoint":
    patch(BackgroundCheckpointIO, "save_checkpoint", after=False)  # the training thread's part of the write
else:
    sys.exit(f"unknown WHERE {WHERE!r}")
sys.exit(main(["train", *sys.argv[5:]]))
