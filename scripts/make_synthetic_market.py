#!/usr/bin/env python
"""Write a synthetic Market-1501-style dataset (no download needed) and print what it holds.

Example: python scripts/make_synthetic_market.py data/synthetic_market --num-train-ids 50 --seed 1
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import time
from collections import Counter
from pathlib import Path

try:
    from reid_tao.data.synthetic import SPLIT_FOLDERS, generate_synthetic_market
    from reid_tao.errors import ReidError
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reid_tao.data.synthetic import SPLIT_FOLDERS, generate_synthetic_market
    from reid_tao.errors import ReidError

_NAME = re.compile(r"^(-?\d+)_c(\d)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="dataset root to create (new, empty, or an older synthetic set)")
    defaults = inspect.signature(generate_synthetic_market).parameters
    for name, param in defaults.items():
        if name == "root":
            continue
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=param.default, help=f"default: {param.default}"
        )
    return parser


def _summary(root: Path) -> str:
    lines = [f"synthetic Market-1501 dataset at {root}"]
    for folder in SPLIT_FOLDERS:
        names = [p.name for p in (root / folder).glob("*.jpg")]
        pids = Counter(int(m.group(1)) for m in map(_NAME.match, names) if m)
        cams = {m.group(2) for m in map(_NAME.match, names) if m}
        real_ids = sum(1 for pid in pids if pid > 0)
        extra = f", {pids[0]} distractors (0000), {pids[-1]} junk (-1)" if pids[0] or pids[-1] else ""
        lines.append(f"  {folder:<20} {len(names):6d} images, {real_ids:5d} ids, {len(cams)} cameras{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    root = args.pop("out_dir")
    start = time.perf_counter()
    try:
        root = generate_synthetic_market(root, **args)
    except ReidError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(_summary(root))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
