#!/usr/bin/env python
"""The adaptation protocol in one command: direct transfer, adaptation and the final evaluation on each target,
one JSON line per (target, setting) on stdout (docs/own_cameras.md#measured).

Targets (give any of them):
  --cuhk01 DIR   CUHK01 as ../shared/data/cuhk01.tar.xz unpacks it (DIR holds unlabeled/, query/,
                 bounding_box_test/): adapt on the 485 unlabeled people, evaluate on the 486 held-out ones.
  --market DIR   Market-1501 on itself (DIR holds bounding_box_train/, query/, bounding_box_test/): the first
                 --market-crops training images in name order, copied as hard links under random names into one
                 folder per camera (no identity in a name), are the unlabeled crops; the test split evaluates.
  --market-tracks DIR
                 the same images named as `reid crops` names a track's crops (<track>_c<camera>s<seq>_<frame>_<box>),
                 one random track number per (person, camera, sequence): Market's own tracklets, identities across
                 cameras and sequences hidden, so adaptation.tracklets=auto clusters tracks.
  --shifted DIR  a simulated second camera network made by scripts/shift_domain.py: DIR/unlabeled, DIR/query,
                 DIR/bounding_box_test.

Each --setting NAME=OVERRIDES (space-separated `section.key=value`; none for the spec as it is) is one
`reid train -e SPEC` run per target. Example:

    python scripts/adapt_protocol.py --source results/market1501_cpu/train/reid_model_latest.pth \\
        --cuhk01 /tmp/cuhk01/cuhk01 --market /tmp/market --work /tmp/protocol \\
        --setting spec= --setting no_camera_loss="adaptation.camera_loss_weight=0"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CAMERA = re.compile(r"_c(\d+)")


def cpu_name() -> str:
    """The CPU model and the instruction-set flags that change the figures (bf16, VNNI, AMX)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        model = found.group(1).strip() if found else model
        flags = {flag for flag in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f" {flag}" in text}
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {' '.join(sorted(flags)) or 'AVX2 only'}"


def market_crops(market: Path, count: int, folder: Path) -> Path:
    """The first ``count`` training images in name order under random names, one subfolder per camera."""
    if folder.is_dir() and any(folder.rglob("*.jpg")):
        return folder
    images = sorted(p for p in (market / "bounding_box_train").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    names = random.Random(0).sample(range(10**8), len(images[:count]))
    for image, name in zip(images[:count], names):
        camera = CAMERA.search(image.name)
        target = folder / f"cam{camera.group(1) if camera else 0}" / f"{name:08d}{image.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image, target)
    return folder


MARKET_NAME = re.compile(r"^(\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.")


def market_tracks(market: Path, count: int, folder: Path) -> Path:
    """The first ``count`` training images in name order as track crops: one random track number per (person,
    camera, sequence), so a track never crosses cameras and no name tells who is who across them."""
    if folder.is_dir() and any(folder.glob("*.jpg")):
        return folder
    images = sorted(p for p in (market / "bounding_box_train").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    parsed = [(image, MARKET_NAME.match(image.name)) for image in images[:count]]
    keys = sorted({found.groups()[:3] for _, found in parsed if found})
    tracks = dict(zip(keys, random.Random(0).sample(range(10**6), len(keys))))
    folder.mkdir(parents=True, exist_ok=True)
    for image, found in parsed:
        if found is None:
            continue
        person_camera_sequence, (frame, box) = found.groups()[:3], found.groups()[3:]
        camera, sequence = person_camera_sequence[1:]
        name = f"{tracks[person_camera_sequence]:06d}_c{camera}s{sequence}_{frame}_{box}{image.suffix}"
        os.link(image, folder / name)
    return folder


def run(command: list[str], log: Path) -> float:
    """Run a reid command, its output to ``log``; returns the wall seconds. Exits on failure."""
    started = time.perf_counter()
    with open(log, "w") as stream:
        code = subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"adapt_protocol: {' '.join(command)} failed with exit {code}; see {log}")
    return time.perf_counter() - started


def evaluate(spec: str, checkpoint: Path, query: Path, gallery: Path, results: Path, extra: list[str]) -> dict:
    command = [
        "reid",
        "evaluate",
        "-e",
        spec,
        f"results_dir={results}",
        f"evaluate.checkpoint={checkpoint}",
        f"dataset.query_dataset_dir={query}",
        f"dataset.test_dataset_dir={gallery}",
        *extra,
    ]
    results.mkdir(parents=True, exist_ok=True)
    run(command, results / "evaluate_command.log")
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    return {"rank1": round(100 * metrics["rank1"], 1), "mAP": round(100 * metrics["mAP"], 1)}


def pseudo_label_counts(log: Path) -> dict[str, int | None]:
    """Clusters and outliers of the first and last clustering, from the training log."""
    found = re.findall(r"pseudo labels: (\d+) clusters, (\d+) outliers", log.read_text())
    if not found:
        return {"clusters": None, "outliers": None}
    (first_clusters, first_outliers), (clusters, outliers) = found[0], found[-1]
    return {
        "clusters_first": int(first_clusters),
        "outliers_first": int(first_outliers),
        "clusters": int(clusters),
        "outliers": int(outliers),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the source checkpoint (e.g. Market's CPU model)")
    parser.add_argument("--spec", default="specs/adapt_cpu.yaml")
    parser.add_argument("--work", required=True, help="folder for the runs (made)")
    parser.add_argument("--cuhk01")
    parser.add_argument("--market")
    parser.add_argument("--market-tracks")
    parser.add_argument("--market-crops", type=int, default=5000)
    parser.add_argument("--shifted")
    parser.add_argument("--setting", action="append", default=[], help="NAME=OVERRIDES (repeat); default: spec=")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-transfer evaluation")
    parser.add_argument("--common", default="", help="overrides for every run (train and evaluate)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # target -> how its unlabeled folder is made from the archive's (None: DIR/unlabeled as it is); a made folder
    # lies beside the results folders work/<target>, never inside one (training would read the results' images)
    made = {"cuhk01": None, "market": market_crops, "market_tracks": market_tracks, "shifted": None}
    targets = {}
    for target, make in made.items():
        if getattr(args, target):
            root = Path(getattr(args, target))
            unlabeled = make(root, args.market_crops, work / f"{target}_crops") if make else root / "unlabeled"
            targets[target] = (unlabeled, root / "query", root / "bounding_box_test")
    if not targets:
        parser.error("give at least one of --cuhk01, --market, --market-tracks, --shifted")
    settings = [item.partition("=")[::2] for item in (args.setting or ["spec="])]
    common, cpu = args.common.split(), cpu_name()
    for target, (unlabeled, query, gallery) in targets.items():
        if not args.no_direct:
            line = {
                "target": target,
                "setting": "direct",
                **evaluate(args.spec, Path(args.source), query, gallery, work / target / "direct", common),
                "cpu": cpu,
            }
            print(json.dumps(line), flush=True)
        for name, overrides in settings:
            results = work / target / name
            results.mkdir(parents=True, exist_ok=True)
            for stale in (results / "train").glob("*.pth"):
                stale.unlink()  # a fresh run, not a resumed one
            command = [
                "reid",
                "train",
                "-e",
                args.spec,
                f"results_dir={results}",
                f"dataset.train_dataset_dir={unlabeled}",
                f"adaptation.source_checkpoint={args.source}",
                *common,
                *overrides.split(),
            ]
            seconds = run(command, results / "train_command.log")
            line = {
                "target": target,
                "setting": name,
                "overrides": overrides,
                **evaluate(args.spec, results / "train" / "reid_model_latest.pth", query, gallery, results, common),
                **pseudo_label_counts(results / "train_command.log"),
                "train_s": round(seconds, 1),
                "cpu": cpu,
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
