"""Market-1501 folders: parse ``<pid>_c<cam>...`` file names into image records.

:func:`scan_market_folder` is the reader of the "market1501" layout (see :mod:`reid_tao.data.layouts`).

The person id is signed: ``-1`` marks junk boxes (skipped everywhere, TAO reads them as id 1) and
``0000`` marks distractors (kept in the gallery, never a match).
"""

import logging
import os
import re
from pathlib import Path

from reid_tao.data.records import ImageRecord
from reid_tao.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_PID = -1
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def parse_market_name(file_name: str) -> tuple[int, int] | None:
    """``0002_c1s1_000451_03.jpg`` -> (2, 1); ``-1_c3s1_...`` -> (-1, 3); None when it does not parse."""
    match = _MARKET_NAME.match(Path(file_name).name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def list_images(folder: str, field: str) -> list[Path]:
    """Sorted image files of a folder (not recursive); a clear error when missing or empty."""
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"{field}: folder {folder} does not exist; set {field} to a Market-1501 style folder")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise no_images_error(folder, field)
    return images


def check_has_images(folder: str, field: str) -> None:
    """The error of :func:`list_images` for a folder without images, found at the first image (no sorting, no
    parsing): cheap enough to run before torch is imported. A missing folder is left to the reader."""
    path = Path(folder)
    if not path.is_dir():
        return
    with os.scandir(path) as entries:
        if any(Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file() for entry in entries):
            return
    raise no_images_error(folder, field)


def _looks_like_list_file(path: Path) -> bool:
    """Whether a .txt file starts like a list file ('relative/path pid [camid]'): not a readme or licence."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = [line.split() for line in stream.read(4096).splitlines()]
    except OSError:
        return False
    first = next((words for words in lines if words and not words[0].startswith("#")), None)
    return first is not None and len(first) >= 2 and first[1].lstrip("-").isdigit()


def no_images_error(folder: str, field: str) -> DataError:
    """A folder without images of its own, with a hint at the list files or folders it holds instead."""
    path = Path(folder)
    lists = sorted(p.name for p in path.glob("*.txt") if _looks_like_list_file(p))
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if lists:
        hint = f"; it holds list files ({', '.join(lists[:3])}): set {field} to one of them"
    elif folders:  # e.g. the Market-1501 root instead of its bounding_box_train
        hint = (
            f"; it holds folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}): set {field} "
            "to the one with the images"
        )
    else:
        hint = ""
    return DataError(f"{field}: folder {folder} contains no .jpg/.jpeg/.png images{hint}")


def scan_market_folder(folder: str, field: str) -> list[ImageRecord]:
    """Records of every identified image in a folder; junk (-1) and unparsable names are skipped.

    ``field`` names the folder for the user in messages (e.g. the spec field it came from)."""
    images = list_images(folder, field)
    records, unparsable, junk = [], [], 0
    for image in images:
        parsed = parse_market_name(image.name)
        if parsed is None:
            unparsable.append(image.name)
            continue
        if parsed[0] == JUNK_PID:
            junk += 1
            continue
        records.append(ImageRecord(str(image), parsed[0], parsed[1]))
    if unparsable and len(unparsable) == len(images):
        raise DataError(
            f"{field}: no file in {folder} is named like Market-1501 '<pid>_c<camera>...' "
            f"(e.g. 0002_c1s1_000451_03.jpg); found e.g. '{unparsable[0]}'"
        )
    if unparsable:
        log.warning(
            "%s: skipped %d files whose names do not parse as '<pid>_c<camera>...' (e.g. %s)",
            field,
            len(unparsable),
            unparsable[0],
        )
    if not records:
        raise DataError(f"{field}: folder {folder} holds only junk images (person id -1)")
    if junk:
        log.info("%s: skipped %d junk images (person id -1)", field, junk)
    return records
