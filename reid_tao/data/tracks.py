"""Tracker output and tracking ground truth as boxes: MOTChallenge text files and DeepStream's KITTI dumps.

Every box keeps where it came from (``file:line``), so any later problem with it (a frame that has no
image) is reported at the line that asked for it.

MOTChallenge (``gt/gt.txt`` or a tracker's result file): one comma-separated line per box,
``frame, id, left, top, width, height, conf, x, y, z`` (tracker results) or
``frame, id, left, top, width, height, flag, class, visibility`` (ground truth); frames count from 1.
In ground truth a flag of 0 marks an entry to ignore, and only the person classes are kept.

KITTI, as DeepStream's tracker writes it (deepstream-app ``kitti-track-output-dir``, or the Service Maker
kitti_dump_probe): one file per frame, named ``<stream>_<frame>.txt`` (deepstream-app puts the source id in
between: ``<stream>_<source>_<frame>.txt``), frames counting from 0, one space-separated line per object:
``label tracking_id truncated occluded alpha left top right bottom h w l x y z ry confidence``, i.e. the KITTI
object label with the tracking id inserted as the 2nd column; the 3-D fields are written as 0. Objects the
tracker has not (yet) tracked carry id 0xFFFFFFFFFFFFFFFF (UNTRACKED_OBJECT_ID in kitti_dump_probe.hpp).
Source: NVIDIA DeepStream SDK API reference, kitti_dump_probe.hpp, and the deepstream-app configuration
groups documentation (kitti-track-output-dir).
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import DataError

# MOTChallenge ground-truth classes that are people: pedestrian, person on vehicle, static person.
MOT_PERSON_CLASSES = (1, 2, 7)
MOT_COLUMNS = ("frame", "id", "left", "top", "width", "height")
KITTI_COLUMNS = ("label", "tracking_id", "truncated", "occluded", "alpha", "left", "top", "right", "bottom")
KITTI_UNTRACKED_ID = 0xFFFFFFFFFFFFFFFF
_KITTI_NAME = re.compile(r"^(\d+)_(?:\d+_)?(\d+)\.txt$")


@dataclass(frozen=True)
class TrackBox:
    """One box of one track in one frame, in pixels (left, top, width, height); origin is ``file:line``."""

    frame: int
    track: int
    left: float
    top: float
    width: float
    height: float
    origin: str


def _number(text: str, column: str, origin: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{origin}: column '{column}' is not a number: {text!r}") from None


def _integer(text: str, column: str, origin: str) -> int:
    """An id; exact also for 64-bit values (a float would round DeepStream's untracked id)."""
    try:
        return int(text)
    except ValueError:
        return int(_number(text, column, origin))


def read_mot_tracks(path: str, ground_truth: bool = False) -> List[TrackBox]:
    """Boxes of a MOTChallenge text file; ``ground_truth`` drops ignored entries and non-person classes."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"tracks file {path} does not exist; set crops.tracks_file (or put gt/gt.txt in the "
                        "sequence folder)")
    boxes = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < len(MOT_COLUMNS):
            raise DataError(f"{origin}: {len(cells)} columns, a MOTChallenge line needs at least "
                            f"{len(MOT_COLUMNS)} ({', '.join(MOT_COLUMNS)}, ...)")
        values = [_number(cell, name, origin) for cell, name in zip(cells, MOT_COLUMNS)]
        if ground_truth and len(cells) >= 8:
            flag, kind = _number(cells[6], "flag", origin), _number(cells[7], "class", origin)
            if flag == 0 or int(kind) not in MOT_PERSON_CLASSES:
                continue
        frame, track = int(values[0]), _integer(cells[1], "id", origin)
        if track < 0:
            continue  # an untracked detection
        boxes.append(TrackBox(frame, track, *values[2:6], origin=origin))
    return boxes


def kitti_frame_files(folder: str, stream: Optional[int]) -> Dict[int, Path]:
    """frame -> file of DeepStream's per-frame KITTI dumps of one stream (``stream`` None: the only one)."""
    directory = Path(folder)
    if not directory.is_dir():
        raise DataError(f"crops.tracks_file: {folder} is not a folder; with crops.format=kitti it is DeepStream's "
                        "kitti-track-output-dir (one <stream>_<frame>.txt file per frame)")
    by_stream: Dict[int, Dict[int, Path]] = {}
    for file in sorted(directory.glob("*.txt")):
        match = _KITTI_NAME.match(file.name)
        if match:
            by_stream.setdefault(int(match.group(1)), {})[int(match.group(2))] = file
    if not by_stream:
        raise DataError(f"crops.tracks_file: {folder} holds no <stream>_<frame>.txt files (DeepStream's KITTI "
                        "tracker output)")
    if stream is None:
        if len(by_stream) > 1:
            raise DataError(f"crops.tracks_file: {folder} holds the streams {sorted(by_stream)}; one camera is one "
                            "stream, so choose one with crops.stream=N")
        return next(iter(by_stream.values()))
    if stream not in by_stream:
        raise DataError(f"crops.stream={stream}: {folder} has no files of that stream (found {sorted(by_stream)})")
    return by_stream[stream]


def read_kitti_tracks(folder: str, stream: Optional[int] = None, labels: Sequence[str] = ()) -> List[TrackBox]:
    """Boxes of DeepStream's KITTI tracker dumps of one stream; ``labels``: keep only these classes."""
    wanted = {label.lower() for label in labels}
    boxes = []
    for frame, file in sorted(kitti_frame_files(folder, stream).items()):
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            cells = line.split()
            if not cells:
                continue
            origin = f"{file}:{number}"
            if len(cells) < len(KITTI_COLUMNS):
                raise DataError(f"{origin}: {len(cells)} columns, a KITTI tracker line needs at least "
                                f"{len(KITTI_COLUMNS)} ({' '.join(KITTI_COLUMNS)} ...)")
            if wanted and cells[0].lower() not in wanted:
                continue
            track = _integer(cells[1], "tracking_id", origin)
            if track < 0 or track == KITTI_UNTRACKED_ID:
                continue
            left, top, right, bottom = (_number(cells[i], KITTI_COLUMNS[i], origin) for i in range(5, 9))
            boxes.append(TrackBox(frame, track, left, top, right - left, bottom - top, origin=origin))
    return boxes


def _read_mot(path: str, ground_truth: bool, stream: Optional[int], labels: Sequence[str]) -> List[TrackBox]:
    return read_mot_tracks(path, ground_truth)


def _read_kitti(path: str, ground_truth: bool, stream: Optional[int], labels: Sequence[str]) -> List[TrackBox]:
    return read_kitti_tracks(path, stream, labels)


class TrackFormat:
    """A tracks format: its reader and the number of its first frame (MOT counts from 1, DeepStream from 0)."""

    def __init__(self, reader: Callable[..., List[TrackBox]], first_frame: int, description: str):
        self.reader, self.first_frame, self.description = reader, first_frame, description


# crops.format -> how its tracks are read.
TRACK_FORMATS = {
    "mot": TrackFormat(_read_mot, first_frame=1, description="MOTChallenge text file (gt/gt.txt or tracker result)"),
    "kitti": TrackFormat(_read_kitti, first_frame=0, description="DeepStream kitti-track-output-dir"),
}
