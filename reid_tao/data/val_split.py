"""A validation split (query + gallery) carved out of the TRAINING identities of a Market-1501 root.

Recipe search must pick recipes on held-out training identities, never on the test set. The new root has
the Market layout, so ``reid train`` / ``reid evaluate`` read it unchanged::

    OUT_DIR/bounding_box_train/  images of the remaining training identities (and distractors 0000)
    OUT_DIR/query/               per held-out identity and camera, queries_per_camera images
    OUT_DIR/bounding_box_test/   the other images of the held-out identities
    OUT_DIR/split.json           {"seed", "num_val_ids", "val_ids", "source", ...}

A query is kept only when its identity has a gallery image on another camera (the Market protocol);
otherwise it goes back to the gallery. Junk boxes (pid -1) are left out. Files are hard links to the
source images (a copy only where linking fails, e.g. across file systems), so no image data is
duplicated. The root is built in a temporary sibling folder and renamed into place when complete.
Used by ``reid tune`` and ``scripts/make_val_split.py``.
"""

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reid_tao.data.layouts import read_split
from reid_tao.data.market import list_images, parse_market_name
from reid_tao.data.records import ImageRecord, summary_table
from reid_tao.errors import ConfigError, DataError
from reid_tao.io.atomic import staging_dir

TRAIN_FOLDER, QUERY_FOLDER, GALLERY_FOLDER = "bounding_box_train", "query", "bounding_box_test"
SPLIT_FILE = "split.json"
DISTRACTOR_PID = 0


def make_val_split(
    market_root: str | Path,
    out_dir: str | Path,
    num_val_ids: int = 100,
    seed: int = 0,
    queries_per_camera: int = 1,
    num_val_ids_name: str = "--num-val-ids",
) -> dict:
    """Write a Market-format root whose query/gallery hold ``num_val_ids`` held-out training identities.

    ``market_root`` must contain ``bounding_box_train/``; ``out_dir`` must not exist or be empty.
    Identities are drawn with ``numpy.random.default_rng(seed)``; for each held-out identity and camera,
    ``queries_per_camera`` images (same generator) become queries, the rest gallery; queries without a
    gallery image of their identity on another camera are moved back to the gallery. Returns the
    contents of ``out_dir/split.json`` plus ``"summary"`` (a printable table). Raises ``ConfigError`` for
    bad numbers (naming ``num_val_ids`` as the caller's user sets it: a flag, or a spec field such as
    tune.num_val_ids) and ``DataError`` for bad folders.
    """
    source = Path(market_root).expanduser().absolute()
    out = Path(out_dir).expanduser().absolute()
    setting = (
        f"{num_val_ids_name} {num_val_ids}" if num_val_ids_name.startswith("-") else f"{num_val_ids_name}={num_val_ids}"
    )
    _check_arguments(source, out, num_val_ids, queries_per_camera, setting)

    train_dir = source / TRAIN_FOLDER
    records = read_split(str(train_dir), f"{TRAIN_FOLDER} of {source}", layout="market1501")
    train_ids = sorted({r.pid for r in records if r.pid != DISTRACTOR_PID})
    if num_val_ids >= len(train_ids) - 1:
        raise ConfigError(
            f"{setting} leaves fewer than 2 training identities "
            f"({train_dir} has {len(train_ids)}); choose at most {len(train_ids) - 2}"
        )

    rng = np.random.default_rng(seed)
    val_ids = sorted(int(pid) for pid in rng.choice(np.array(train_ids), size=num_val_ids, replace=False))
    new_train, query, gallery = _assign(records, set(val_ids), queries_per_camera, rng)
    ids_without_query = sorted(set(val_ids) - {r.pid for r in query})

    split = {
        "seed": int(seed),
        "num_val_ids": int(num_val_ids),
        "val_ids": val_ids,
        "source": str(source),
        "queries_per_camera": int(queries_per_camera),
        "counts": {
            "train_images": len(new_train),
            "train_ids": len(train_ids) - num_val_ids,
            "query_images": len(query),
            "gallery_images": len(gallery),
            "junk_skipped": _count_junk(train_dir),
        },
        "val_ids_without_query": ids_without_query,
    }
    linked, copied = _write_atomically(
        out, {TRAIN_FOLDER: new_train, QUERY_FOLDER: query, GALLERY_FOLDER: gallery}, split
    )
    split["counts"].update(linked=linked, copied=copied)
    split["summary"] = summary_table({"train": new_train, "query": query, "gallery": gallery})
    return split


def _check_arguments(source: Path, out: Path, num_val_ids: int, queries_per_camera: int, setting: str) -> None:
    if num_val_ids < 1:
        raise ConfigError(f"{setting}: the number of held-out identities must be at least 1")
    if queries_per_camera < 1:
        raise ConfigError(f"--queries-per-camera must be at least 1, got {queries_per_camera}")
    if not (source / TRAIN_FOLDER).is_dir():
        raise DataError(
            f"{source} has no {TRAIN_FOLDER}/ folder; pass the Market-1501 root "
            f"(the folder that contains {TRAIN_FOLDER}/)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output {out} already exists and is not empty; pass a new folder or remove it")


def _assign(
    records: Sequence[ImageRecord], val_ids: set, queries_per_camera: int, rng: np.random.Generator
) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    """Split records into (new train, query, gallery); deterministic given ``rng``'s state."""
    new_train = [r for r in records if r.pid not in val_ids]
    by_id_camera: dict[int, dict[int, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.pid in val_ids:
            by_id_camera[record.pid][record.camid].append(record)
    query, gallery = [], []
    for pid in sorted(by_id_camera):
        id_query, id_gallery = [], []
        for camid in sorted(by_id_camera[pid]):
            images = sorted(by_id_camera[pid][camid], key=lambda r: r.path)
            chosen = set(rng.choice(len(images), size=min(queries_per_camera, len(images)), replace=False).tolist())
            id_query += [r for i, r in enumerate(images) if i in chosen]
            id_gallery += [r for i, r in enumerate(images) if i not in chosen]
        id_query, id_gallery = _keep_matchable_queries(id_query, id_gallery)
        query += id_query
        gallery += id_gallery
    return new_train, sorted(query, key=lambda r: r.path), sorted(gallery, key=lambda r: r.path)


def _keep_matchable_queries(
    query: list[ImageRecord], gallery: list[ImageRecord]
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Move queries (of one identity) without a gallery image on another camera back to the gallery.

    One at a time: a query moved back can become the cross-camera match that keeps another query
    (e.g. two cameras with one image each end as one query and one gallery image, not two gallery images).
    """
    query, gallery = list(query), list(gallery)
    while True:
        gallery_cams = {r.camid for r in gallery}
        orphan = next((r for r in query if not gallery_cams - {r.camid}), None)
        if orphan is None:
            return query, gallery
        query.remove(orphan)
        gallery.append(orphan)


def _count_junk(train_dir: Path) -> int:
    return sum(
        1 for image in list_images(str(train_dir), TRAIN_FOLDER) if (parse_market_name(image.name) or (None,))[0] == -1
    )


def _write_atomically(out: Path, folders: dict[str, Sequence[ImageRecord]], split: dict) -> tuple[int, int]:
    """Build the root in a temporary sibling folder, then rename it to ``out``; returns (linked, copied)."""
    with staging_dir(out) as staging:  # mode per umask (mkdtemp's was 0700), removed on failure
        linked = copied = 0
        can_link = True
        for folder, records in folders.items():
            (staging / folder).mkdir()
            for record in records:
                source = Path(record.path)
                target = staging / folder / source.name
                if can_link:
                    try:
                        os.link(source, target)
                        linked += 1
                        continue
                    except OSError:  # another file system, or links not allowed: copy from now on
                        can_link = False
                shutil.copy2(source, target)
                copied += 1
        split = dict(split, counts=dict(split["counts"], linked=linked, copied=copied))
        (staging / SPLIT_FILE).write_text(json.dumps(split, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked); rename will not replace a directory on every platform
        os.rename(staging, out)
    return linked, copied
