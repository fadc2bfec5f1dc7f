"""List files: one image per line, ``relative/path pid [camid]`` (MSMT17's ``list_train.txt`` and the like).

:func:`read_list_file` is the reader of the "list_file" layout (see :mod:`reid_tao.data.layouts`).

Where the paths start from: the list's own folder, or, for MSMT17, the image folder beside the list (V1:
``train/`` and ``test/``; V2: ``mask_train_v2/`` and ``mask_test_v2/``). MSMT17 numbers its test identities
from 0 again, so one relative name can exist under both ``train/`` and ``test/``: its own rule decides first
(``list_train``/``list_val`` -> the train folders, ``list_query``/``list_gallery`` -> the test folders), then
the list's own folder, then the other image folders. The folder chosen must hold every path of the list
(checked when the list is read, before any training); a list complete under two folders that the rule does
not separate, or with a missing image, is a DataError naming the list and the line.

The camera, when the third column is missing, comes from the file name: Market-1501's ``..._c<camera>...``
or MSMT17's third underscore field (``0000_000_01_0303morning_0015_0.jpg`` -> camera 1).

Identities: in a list file every id >= 0 is an ordinary identity (MSMT17 numbers its people from 0) and -1
marks junk (skipped). Records carry ids in the evaluation protocol's convention, where 0 is Market's
"distractor, never a match", so this reader stores ``pid + 1`` and keeps the file's own id in
``ImageRecord.dataset_pid`` (what plots and messages show).
"""

import logging
import re
from pathlib import Path
from typing import NamedTuple

from reid_tao.data.market import JUNK_PID, parse_market_name
from reid_tao.data.records import ImageRecord
from reid_tao.errors import DataError

log = logging.getLogger(__name__)

# Folders (beside the list) that list paths may be relative to, besides the list's own folder.
MSMT17_IMAGE_FOLDERS = ("train", "test", "mask_train_v2", "mask_test_v2")
# MSMT17's rule: which image folders a list belongs to, by the start of the list's file name.
MSMT17_LIST_FOLDERS = {
    "list_train": ("train", "mask_train_v2"),
    "list_val": ("train", "mask_train_v2"),
    "list_query": ("test", "mask_test_v2"),
    "list_gallery": ("test", "mask_test_v2"),
}


class ListEntry(NamedTuple):
    path: str  # resolved image path
    pid: int | None  # as written in the file; None when the line has no id (allowed for inference lists)
    camid: int | None
    line: int  # 1-based line number, for messages


def camera_from_name(file_name: str) -> int | None:
    """Market ``0002_c1s1_000451_03.jpg`` -> 1; MSMT17 ``0000_000_01_0303morning_0015_0.jpg`` -> 1; else None."""
    market = parse_market_name(file_name)
    if market is not None:
        return market[1]
    fields = Path(file_name).name.split("_")
    # ASCII digits only: str.isdigit() also accepts e.g. superscripts, which int() rejects
    return int(fields[2]) if len(fields) > 3 and re.fullmatch(r"[0-9]+", fields[2]) else None


def _ruled_roots(list_path: Path) -> list[Path]:
    """The image folders MSMT17's rule gives this list by its name (none for other names)."""
    folders = next(
        (folders for prefix, folders in MSMT17_LIST_FOLDERS.items() if list_path.stem.startswith(prefix)), ()
    )
    return [list_path.parent / name for name in folders]


def _candidate_roots(list_path: Path) -> list[Path]:
    """Folders the list's paths may be relative to, most likely first (MSMT17's rule, see the module doc)."""
    others = [list_path.parent] + [list_path.parent / name for name in MSMT17_IMAGE_FOLDERS]
    ruled = _ruled_roots(list_path)
    return [root for root in ruled + [root for root in others if root not in ruled] if root.is_dir()]


def _first_missing(root: Path, rows) -> tuple | None:
    return next((row for row in rows if not (root / row[0]).is_file()), None)


def _image_root(list_path: Path, rows, field: str) -> Path:
    """The one folder that holds every image of the list (``rows``: (relative path, ..., line number))."""
    candidates = _candidate_roots(list_path)
    first, first_line = rows[0][0], rows[0][-1]
    holding_first = [root for root in candidates if (root / first).is_file()]
    if not holding_first:
        tried = ", ".join(str(root) for root in candidates)
        raise DataError(
            f"{field}: {list_path} line {first_line}: image {first} is not found relative to the list's "
            f"folder or its MSMT17 image folders (tried {tried}); paths must be relative to one of them"
        )
    complete = [root for root in holding_first if _first_missing(root, rows) is None]
    if not complete:
        root = holding_first[0]
        missing = _first_missing(root, rows)
        raise DataError(
            f"{field}: {list_path} line {missing[-1]}: image {missing[0]} is missing from {root}, "
            f"the folder of the list's first image; every path of a list must be relative to the same "
            f"folder: add the image or remove the line"
        )
    if len(complete) > 1 and complete[0] not in _ruled_roots(list_path):
        raise DataError(
            f"{field}: {list_path}: every image of the list exists under both {complete[0]} and "
            f"{complete[1]}, so it is ambiguous which is meant; name the list list_train/list_val "
            f"(train images) or list_query/list_gallery (test images), or move it beside its images"
        )
    return complete[0]


_COMMENT = re.compile(r"(?:^|\s)#")  # '#' inside a path (a/b#1.jpg) is part of the path


def parse_list_file(path: str, field: str, require_ids: bool = True) -> list[ListEntry]:
    """Every non-empty line of a list file ('#' at a line's start or after a space starts a comment), paths
    resolved; DataError names the line."""
    list_path = Path(path)
    if not list_path.is_file():
        raise DataError(f"{field}: list file {path} does not exist; set {field} to a folder or a list file")
    rows = []
    for number, text in enumerate(list_path.read_text().splitlines(), start=1):
        parts = _COMMENT.split(text, 1)[0].split()  # a comment starts a line or follows a space
        if not parts:
            continue
        if len(parts) > 3 or (require_ids and len(parts) < 2):
            raise DataError(
                f"{field}: {path} line {number}: expected 'relative/path pid [camid]', got {text.strip()!r}"
            )
        try:
            numbers = [int(value) for value in parts[1:]]
        except ValueError:
            raise DataError(
                f"{field}: {path} line {number}: pid and camid must be integers, got {text.strip()!r}"
            ) from None
        pid = numbers[0] if numbers else None
        camid = numbers[1] if len(numbers) > 1 else None
        if pid is not None and pid < JUNK_PID:
            raise DataError(f"{field}: {path} line {number}: person id {pid} is invalid (ids are >= 0, -1 = junk)")
        if camid is None and require_ids:
            camid = camera_from_name(parts[0])
            if camid is None:
                raise DataError(
                    f"{field}: {path} line {number}: no camera in the file name {parts[0]!r} "
                    "(Market '..._c<N>...' or MSMT17 'pid_index_camera_...'); add it as a third column"
                )
        if camid is not None and camid < 0:
            raise DataError(f"{field}: {path} line {number}: camera id {camid} is negative")
        rows.append((parts[0], pid, camid, number))
    if not rows:
        raise DataError(f"{field}: list file {path} has no entries")
    root = _image_root(list_path, rows, field)
    return [ListEntry(str(root / relative), pid, camid, number) for relative, pid, camid, number in rows]


def read_list_file(path: str, field: str) -> list[ImageRecord]:
    """Records of every identified image of a list file (junk, id -1, skipped); ids shifted by one, see above."""
    entries = parse_list_file(path, field)
    records = [
        ImageRecord(entry.path, entry.pid + 1, entry.camid, dataset_pid=entry.pid)
        for entry in entries
        if entry.pid != JUNK_PID
    ]
    if not records:
        raise DataError(f"{field}: list file {path} holds only junk entries (person id -1)")
    if len(records) < len(entries):
        log.info("%s: skipped %d junk entries (person id -1)", field, len(entries) - len(records))
    return records


def list_file_images(path: str, field: str) -> list[str]:
    """Every image path of a list file in file order (ids optional, junk included): what inference embeds."""
    return [entry.path for entry in parse_list_file(path, field, require_ids=False)]
