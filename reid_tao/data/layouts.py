"""Dataset layouts: how a split (train, query or gallery) is stored on disk, and the one way to read one.

Every caller reads a split with :func:`read_split`. A layout is a reader, which takes ``(path, field)``
(``field`` names the path for the user in error messages, e.g. the spec field it came from) and returns
the split's :class:`~reid_tao.data.records.ImageRecord` s, plus a ``detect`` rule that says whether a path
looks like that layout. ``layout="auto"`` takes the first layout in :data:`LAYOUTS` whose rule matches,
else :data:`DEFAULT_LAYOUT` (whose reader then explains what is wrong with the path). A layout named
explicitly (the spec's ``dataset.layout``) is used as it is; an existing path whose form does not fit it is
a DataError that says which layout the path does look like.

Domain adaptation reads its training split with :func:`read_unlabeled` through the same table: a layout's
``unlabeled`` reader returns the split's images with person id 0 (no identity known) and their cameras. A
layout without one is refused for adaptation in one line.

Adding a layout is one reader function (plus an image lister, for inference, and an unlabeled reader, for
adaptation) and one :data:`LAYOUTS` entry. Detection rules look at the form of the path only (folder, file
suffix, whether a folder holds images or only subfolders), so a missing path still reaches the reader that
reports it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reid_tao.data.list_file import list_file_images, read_list_file
from reid_tao.data.market import check_has_images, list_images, scan_market_folder
from reid_tao.data.records import ImageRecord
from reid_tao.data.unlabeled import (
    camera_folder_images,
    is_camera_folders,
    read_unlabeled_folder,
    read_unlabeled_list,
    refuse_camera_folders,
)
from reid_tao.errors import DataError

Reader = Callable[[str, str], list[ImageRecord]]


@dataclass(frozen=True)
class Layout:
    reader: Reader
    detect: Callable[[str], bool]
    description: str
    images: Callable[[str, str], list[str]]  # every image path of a split, any names (what inference embeds)
    # the split as unlabeled images (domain adaptation): person id 0 and a camera each; None: adaptation cannot
    unlabeled: Reader | None = None


LAYOUTS: dict[str, Layout] = {
    "list_file": Layout(
        read_list_file,
        detect=lambda path: Path(path).suffix.lower() == ".txt",
        description="a .txt list of 'relative/path pid [camid]' lines (e.g. MSMT17's list_train.txt)",
        images=list_file_images,
        unlabeled=read_unlabeled_list,
    ),
    "camera_folders": Layout(
        refuse_camera_folders,
        detect=is_camera_folders,
        description="a folder of subfolders, one camera each (any image names, no person ids)",
        images=camera_folder_images,
        unlabeled=read_unlabeled_folder,
    ),
    "market1501": Layout(
        scan_market_folder,
        detect=lambda path: Path(path).is_dir(),
        description="a folder of Market-1501 named images '<pid>_c<camera>...'",
        images=lambda path, field: [str(p) for p in list_images(path, field)],
        unlabeled=read_unlabeled_folder,
    ),
}
DEFAULT_LAYOUT = "market1501"
LAYOUT_CHOICES = ("auto", *LAYOUTS)  # what dataset.layout accepts


def detect_layout(path: str) -> str:
    """The name of the first layout whose rule matches ``path``, else :data:`DEFAULT_LAYOUT`."""
    return next((name for name, layout in LAYOUTS.items() if layout.detect(path)), DEFAULT_LAYOUT)


def resolve_layout(path: str, field: str, layout: str = "auto") -> str:
    """The layout to read ``path`` with: ``layout`` itself, or the detected one for "auto".

    Raises ValueError for an unknown ``layout``, DataError when an existing path does not fit the named one."""
    if layout == "auto":
        return detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(('auto', *LAYOUTS))}")
    if Path(path).exists() and not LAYOUTS[layout].detect(path):
        detected = detect_layout(path)
        raise DataError(
            f"{field}: {path} looks like {LAYOUTS[detected].description}, not "
            f"{LAYOUTS[layout].description} as dataset.layout={layout} says; set "
            f"dataset.layout={detected} (or auto) or point {field} at {layout} data"
        )
    return layout


def read_split(path: str, field: str, layout: str = "auto") -> list[ImageRecord]:
    """The records of one split stored at ``path`` in ``layout`` ("auto": detected from the path).

    Raises DataError (naming ``field``) for unreadable data, ValueError for an unknown ``layout``."""
    return LAYOUTS[resolve_layout(path, field, layout)].reader(path, field)


def read_unlabeled(path: str, field: str, layout: str = "auto") -> list[ImageRecord]:
    """The images of an unlabeled split (domain adaptation) stored at ``path`` in ``layout``, each with person
    id 0 and its camera (:mod:`~reid_tao.data.unlabeled` says where a folder's cameras come from).

    Raises DataError for unreadable data or a layout without an unlabeled reader, ValueError for an unknown
    ``layout``."""
    name = resolve_layout(path, field, layout)
    reader = LAYOUTS[name].unlabeled
    if reader is None:
        raise DataError(
            f"{field}: {path} is {LAYOUTS[name].description}, which domain adaptation cannot read "
            f"(layout {name} has no unlabeled reader); point {field} at a folder of images or a .txt "
            "list of image paths"
        )
    return reader(path, field)


def split_images(path: str, field: str, layout: str = "auto") -> list[str]:
    """Every image of a split, names unparsed: a folder's images sorted by path, a list file's in file order."""
    return LAYOUTS[resolve_layout(path, field, layout)].images(path, field)


def check_split_folder(path: str, field: str, layout: str = "auto") -> None:
    """What :func:`read_split` would refuse at once, without reading the split: a path of another layout than the
    one named, or a Market-1501 folder without images. Cheap and torch-free, so `reid` runs it before importing
    torch."""
    if resolve_layout(path, field, layout) == "market1501":
        check_has_images(path, field)
