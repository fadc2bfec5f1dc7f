#!/usr/bin/env python
"""Carve a validation split (query + gallery) out of the TRAINING identities of a Market-1501 root.

The split itself is reid_tao.data.val_split.make_val_split (also used by `reid tune`), whose docstring
describes the folders it writes.

Example: python scripts/make_val_split.py data/market1501 data/market1501_val --num-val-ids 100 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from reid_tao.data.val_split import SPLIT_FILE, make_val_split
    from reid_tao.errors import ReidError
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reid_tao.data.val_split import SPLIT_FILE, make_val_split
    from reid_tao.errors import ReidError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("market_root", type=Path, help="Market-1501 root holding bounding_box_train/")
    parser.add_argument("out_dir", type=Path, help="new dataset root to create (must not exist or be empty)")
    parser.add_argument("--num-val-ids", type=int, default=100, help="held-out identities (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--queries-per-camera", type=int, default=1, help="query images per held-out identity and camera (default: 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        split = make_val_split(
            args.market_root,
            args.out_dir,
            num_val_ids=args.num_val_ids,
            seed=args.seed,
            queries_per_camera=args.queries_per_camera,
        )
    except ReidError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    counts = split["counts"]
    print(f"validation split of {split['source']} written to {Path(args.out_dir).absolute()}")
    print(split["summary"])
    print(f"{counts['linked']} files hard-linked, {counts['copied']} copied, {counts['junk_skipped']} junk skipped")
    if split["val_ids_without_query"]:
        print(
            f"warning: {len(split['val_ids_without_query'])} held-out ids have no query (seen on one camera "
            f"only): {split['val_ids_without_query']}",
            file=sys.stderr,
        )
    print(f"{len(split['val_ids'])} held-out ids listed in {Path(args.out_dir).absolute() / SPLIT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
