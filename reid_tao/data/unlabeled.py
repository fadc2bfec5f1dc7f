"""Unlabeled image sets (for domain adaptation): any file names, cameras from the folder structure.

The unlabeled readers of the layouts (:data:`~reid_tao.data.layouts.LAYOUTS`, read through
:func:`~reid_tao.data.layouts.read_unlabeled`): :func:`read_unlabeled_folder` for a folder ("market1501",
"camera_folders"), :func:`read_unlabeled_list` for a list file ("list_file"); and the "camera_folders" layout
itself, a folder of camera subfolders without images of its own. Where a folder's cameras come from, first rule
that applies:

* a folder with subfolders: every subfolder (any name; its images at any depth) is one camera, numbered
  1, 2, ... in name order (images directly in the top folder, if any, form one more camera);
* a folder of images whose names all carry a camera (Market-1501 ``..._c<N>...``, MSMT17
  ``pid_index_camera_...``), e.g. the output of ``reid crops`` for several cameras: those cameras;
* otherwise one camera.

A ``.txt`` list file holds one image path per line (relative to the list's folder, MSMT17 lists work as
they are); a camera given as a third column, else one in the file name, else camera 1; ids are ignored.
Records carry person id 0 ("no identity known"): identities are what the clustering finds.

Links to folders are not followed (a camera folder linked to ``/`` would walk the whole filesystem); a camera
folder that is such a link is skipped with a warning. Links to image files are read.
"""

import logging
import os
from pathlib import Path

from reid_tao.data.list_file import camera_from_name, parse_list_file
from reid_tao.data.market import IMAGE_EXTENSIONS, no_images_error
from reid_tao.data.records import ImageRecord
from reid_tao.errors import DataError

log = logging.getLogger(__name__)

UNKNOWN_PID = 0


def _walk(folder: Path) -> list[Path]:
    """Every file below ``folder`` without following links to folders (os.walk's default); unreadable
    subfolders (e.g. under /proc) are passed over, not raised."""
    return [Path(root) / name for root, _, names in os.walk(folder) for name in names]


def _images(folder: Path, recursive: bool) -> list[Path]:
    found = _walk(folder) if recursive else folder.iterdir()
    return sorted(
        p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _camera_folders(folder: Path, field: str) -> list[Path]:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    linked = [sub for sub in subfolders if sub.is_symlink()]
    if linked:
        log.warning(
            "%s: %s %s a link to a folder, not followed (reid_tao reads only what lies in %s); copy the "
            "folder there, or list its images in a .txt file",
            field,
            ", ".join(sub.name for sub in linked),
            "is" if len(linked) == 1 else "are each",
            folder,
        )
    return [sub for sub in subfolders if not sub.is_symlink() and _images(sub, recursive=True)]


def read_unlabeled_list(path: str, field: str) -> list[ImageRecord]:
    """The images of a list file, ids ignored; the camera from the third column, else the name, else 1."""
    entries = parse_list_file(path, field, require_ids=False)
    return [
        ImageRecord(
            entry.path, UNKNOWN_PID, entry.camid if entry.camid is not None else (camera_from_name(entry.path) or 1)
        )
        for entry in entries
    ]


def _camera_tree(folder: Path, field: str) -> tuple[list[Path], list[Path]]:
    """(camera folders, images directly in ``folder``)."""
    if not folder.is_dir():
        raise DataError(f"{field}: {folder} is neither a folder nor a .txt list file of images")
    return _camera_folders(folder, field), _images(folder, recursive=False)


def read_unlabeled_folder(path: str, field: str) -> list[ImageRecord]:
    """The images of a folder with cameras as the module docstring says (subfolders, else names, else one)."""
    folder = Path(path)
    cameras, top = _camera_tree(folder, field)
    if cameras:
        records = [
            ImageRecord(str(image), UNKNOWN_PID, number)
            for number, sub in enumerate(cameras, start=1)
            for image in _images(sub, recursive=True)
        ]
        records += [ImageRecord(str(image), UNKNOWN_PID, len(cameras) + 1) for image in top]
        log.info(
            "%s: %d unlabeled images, one camera per subfolder: %s%s",
            field,
            len(records),
            ", ".join(f"{sub.name}=c{number}" for number, sub in enumerate(cameras, start=1)),
            f", top-level images=c{len(cameras) + 1}" if top else "",
        )
        return records
    if not top:
        raise DataError(f"{field}: folder {path} contains no .jpg/.jpeg/.png images (nor subfolders with some)")
    named = [camera_from_name(image.name) for image in top]
    if all(camera is not None for camera in named):
        log.info("%s: %d unlabeled images, cameras from the file names", field, len(top))
        return [ImageRecord(str(image), UNKNOWN_PID, camera) for image, camera in zip(top, named)]
    log.info("%s: %d unlabeled images, one camera (no subfolders, no cameras in the names)", field, len(top))
    return [ImageRecord(str(image), UNKNOWN_PID, 1) for image in top]


def is_camera_folders(path: str) -> bool:
    """The "camera_folders" layout's rule: a folder with subfolders and no images of its own."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    subfolders = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                    return False
                subfolders = subfolders or entry.is_dir()
    except OSError:  # unreadable: the reader of the default layout reports it
        return False
    return subfolders


def camera_folder_images(path: str, field: str) -> list[str]:
    """Every image of a folder of camera folders (what inference embeds), camera by camera in name order."""
    cameras, top = _camera_tree(Path(path), field)
    images = [image for sub in cameras for image in _images(sub, recursive=True)] + top
    if not images:
        raise DataError(f"{field}: folder {path} contains no .jpg/.jpeg/.png images (nor subfolders with some)")
    return [str(image) for image in images]


def refuse_camera_folders(path: str, field: str) -> list[ImageRecord]:
    """The labelled reader of "camera_folders": camera folders carry no person ids, so training or evaluating
    on them is an error that says what reads them and what to set instead."""
    raise DataError(
        f"{no_images_error(path, field)}; a folder of camera folders carries no person ids (only "
        "adaptation.enable=true and reid inference read it)"
    )
