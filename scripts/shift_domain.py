#!/usr/bin/env python
"""A second camera network made of real images, to rehearse adaptation where no second re-ID dataset is at hand:
copy Market-1501-named folders with every image as a cheaper, differently tuned camera would see it (half
resolution, desaturated, a blue-green cast, lower contrast, darker mid-tones). Names are kept, so the query and
gallery copies stay a labelled test split and a training copy can be given to adaptation as unlabeled crops.

The shift is a simulation, not a second dataset: the people, poses and backgrounds are Market's.

Example (docs/own_cameras.md):
    python scripts/shift_domain.py /data/market/query /data/shifted/query
    python scripts/shift_domain.py /data/market/bounding_box_test /data/shifted/bounding_box_test
    python scripts/shift_domain.py /data/market_5000 /data/shifted/unlabeled
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
CAST = np.array([0.8, 1.0, 1.15], dtype=np.float32)  # less red, more blue
SATURATION, CONTRAST, LIFT, GAMMA = 0.4, 0.6, 0.15, 1.3


def shift(image: Image.Image) -> Image.Image:
    """The shifted camera's view of an RGB image (same size)."""
    width, height = image.size
    image = image.resize((max(1, width // 2), max(1, height // 2)), Image.BILINEAR).resize(
        (width, height), Image.BILINEAR
    )
    pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    grey = pixels @ LUMA
    pixels = SATURATION * pixels + (1 - SATURATION) * grey[..., None]
    pixels = CONTRAST * (pixels * CAST) + LIFT
    pixels = np.power(np.clip(pixels, 0, 1), GAMMA)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8))


def shift_folder(source: Path, target: Path) -> int:
    """Write the shifted copy of every .jpg/.png in ``source`` (same names) into ``target``; returns the count."""
    target.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in images:
        with Image.open(path) as image:
            shift(image.convert("RGB")).save(target / path.name, quality=90)
    return len(images)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a folder of images (e.g. Market-1501's query)")
    parser.add_argument("target", type=Path, help="where the shifted copies go (created)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise SystemExit(f"shift_domain: {args.source} is not a folder")
    print(f"{shift_folder(args.source, args.target)} images -> {args.target}")


if __name__ == "__main__":
    main()
