"""The device check's rehearsal (scripts/gpu_check.sh with GPU_CHECK_DEVICE=cpu): its fast steps run here,
so the one GPU call cannot fail on a typo, a path or a missing helper. The full rehearsal (every step,
`reid train` and `reid evaluate` included) is in docs/benchmarks.md."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a shell script starting several Python processes


def test_rehearsal_writes_one_json_line_per_step(tmp_path):
    steps = ["env", "data", "metrics_market", "rerank_market"]
    environment = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "OUT": str(tmp_path / "out"),
                   "GPU_CHECK_WORK": str(tmp_path / "work"), "GPU_CHECK_STEPS": " ".join(steps),
                   "PYTHON": os.environ.get("PYTHON", "python"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=environment, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == steps
    assert all(line["rc"] == 0 for line in lines), lines
    assert lines[0]["result"]["device"] == "cpu"
    assert lines[2]["result"]["num_query"] == 200 and lines[3]["result"]["task"] == "rerank"
    assert len(done.stdout.splitlines()) <= len(steps) + 1  # one short line per step
    assert (tmp_path / "work" / "market" / "bounding_box_train").is_dir()
