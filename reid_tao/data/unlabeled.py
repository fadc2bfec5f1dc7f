"""Unlabeled image sets (for domain adaptation): any file names, cameras from the folder structure.

The reader of the "unlabeled" layout. Where the cameras come from, first rule that applies:

* a folder with subfolders: every subfolder (any name; its images at any depth) is one camera, numbered
  1, 2, ... in name order (images directly in the top folder, if any, form one more camera);
* a folder of images whose names all carry a camera (Market-1501 ``..._c<N>...``, MSMT17
  ``pid_index_camera_...``), e.g. the output of ``reid crops`` for several cameras: those cameras;
* otherwise one camera.

A ``.txt`` list file holds one image path per line (relative to the list's folder, MSMT17 lists work as
they are); a camera given as a third column, else one in the file name, else camera 1; ids are ignored.
Records carry person id 0 ("no identity known"): identities are what the clustering finds.
"""
import logging
from pathlib import Path
from typing import List

from ..errors import DataError
from .list_file import camera_from_name, parse_list_file
from .market import IMAGE_EXTENSIONS
from .records import ImageRecord

log = logging.getLogger(__name__)

UNKNOWN_PID = 0


def _images(folder: Path, recursive: bool) -> List[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _from_list(path: str, field: str) -> List[ImageRecord]:
    entries = parse_list_file(path, field, require_ids=False)
    return [ImageRecord(entry.path, UNKNOWN_PID, entry.camid if entry.camid is not None
                        else (camera_from_name(entry.path) or 1)) for entry in entries]


def _from_folder(path: str, field: str) -> List[ImageRecord]:
    folder = Path(path)
    cameras = [sub for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
               if _images(sub, recursive=True)]
    top = _images(folder, recursive=False)
    if cameras:
        records = [ImageRecord(str(image), UNKNOWN_PID, number)
                   for number, sub in enumerate(cameras, start=1) for image in _images(sub, recursive=True)]
        records += [ImageRecord(str(image), UNKNOWN_PID, len(cameras) + 1) for image in top]
        log.info("%s: %d unlabeled images, one camera per subfolder: %s%s", field, len(records),
                 ", ".join(f"{sub.name}=c{number}" for number, sub in enumerate(cameras, start=1)),
                 f", top-level images=c{len(cameras) + 1}" if top else "")
        return records
    if not top:
        raise DataError(f"{field}: folder {path} contains no .jpg/.jpeg/.png images (nor subfolders with some)")
    named = [camera_from_name(image.name) for image in top]
    if all(camera is not None for camera in named):
        log.info("%s: %d unlabeled images, cameras from the file names", field, len(top))
        return [ImageRecord(str(image), UNKNOWN_PID, camera) for image, camera in zip(top, named)]
    log.info("%s: %d unlabeled images, one camera (no subfolders, no cameras in the names)", field, len(top))
    return [ImageRecord(str(image), UNKNOWN_PID, 1) for image in top]


def read_unlabeled(path: str, field: str) -> List[ImageRecord]:
    """The images of an unlabeled set (folder or list file) with cameras as the module docstring says."""
    if Path(path).suffix.lower() == ".txt":
        return _from_list(path, field)
    if not Path(path).is_dir():
        raise DataError(f"{field}: {path} is neither a folder nor a .txt list file of images")
    return _from_folder(path, field)
