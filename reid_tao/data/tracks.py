"""Tracker output and tracking ground truth as boxes: MOTChallenge text files and DeepStream's KITTI dumps.

Every box keeps where it came from (``file:line``), so any later problem with it (a frame that has no
image) is reported at the line that asked for it.

MOTChallenge (``gt/gt.txt`` or a tracker's result file): one comma-separated line per box,
``frame, id, left, top, width, height, conf, x, y, z`` (tracker results) or
``frame, id, left, top, width, height, flag, class, visibility`` (ground truth); frames count from 1.
In ground truth a flag of 0 marks an entry to ignore, and only the person classes are kept.

KITTI, as DeepStream's tracker writes it (deepstream-app ``kitti-track-output-dir``, or the Service Maker
kitti_dump_probe): one file per frame, named ``<stream>_<frame>.txt`` by kitti_dump_probe (``%03u_%06lu``) and
``<app>_<stream>_<frame>.txt`` by deepstream-app (``%02u_%03u_%06lu``: the app instance's index, then the
source's pad index), frames counting from 0, one space-separated line per object:
``label tracking_id truncated occluded alpha left top right bottom h w l x y z ry confidence``, i.e. the KITTI
object label with the tracking id inserted as the 2nd column; the 3-D fields are written as 0. Objects the
tracker has not (yet) tracked carry id 0xFFFFFFFFFFFFFFFF (UNTRACKED_OBJECT_ID in kitti_dump_probe.hpp).
Source: NVIDIA DeepStream SDK API reference, kitti_dump_probe.hpp, deepstream_app.c (write_kitti_track_output)
and the deepstream-app configuration groups documentation (kitti-track-output-dir). Two files that name the
same stream and frame are refused, not one silently dropped.
"""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reid_tao.errors import DataError
from reid_tao.io.regular_files import not_a_regular_file, read_regular_file

# MOTChallenge ground-truth classes that are people: pedestrian, person on vehicle, static person.
MOT_PERSON_CLASSES = (1, 2, 7)
MOT_COLUMNS = ("frame", "id", "left", "top", "width", "height")
KITTI_COLUMNS = ("label", "tracking_id", "truncated", "occluded", "alpha", "left", "top", "right", "bottom")
KITTI_UNTRACKED_ID = 0xFFFFFFFFFFFFFFFF
_KITTI_NAME = re.compile(r"^(?:\d+_)?(\d+)_(\d+)\.txt$")  # [app_]stream_frame
MAX_ID_CHARACTERS = 24  # 2**64 - 1, DeepStream's largest id, has 20 digits


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


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def _number(text: str, column: str, origin: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{origin}: column '{column}' is not a number: {_shown(text)}") from None
    if not math.isfinite(value):  # nan, inf, or too many digits for a float
        raise DataError(f"{origin}: column '{column}' is not a finite number: {_shown(text)}")
    return value


def _integer(text: str, column: str, origin: str) -> int:
    """A frame number or an id; exact also for 64-bit values (a float would round DeepStream's untracked id)."""
    if len(text.strip()) > MAX_ID_CHARACTERS:
        raise DataError(f"{origin}: column '{column}' is not a whole number of at most 20 digits: {_shown(text)}")
    try:
        return int(text)
    except ValueError:
        value = _number(text, column, origin)
    if not value.is_integer():
        raise DataError(f"{origin}: column '{column}' is not a whole number: {_shown(text)}")
    return int(value)


def _read_lines(file: Path, field: str) -> list[str]:
    """The lines of a regular text file (a FIFO would block the read forever), or one DataError line."""
    try:
        return read_regular_file(file).decode("utf-8", errors="replace").splitlines()
    except OSError as error:
        raise DataError(f"{field}: {file} cannot be read ({error.strerror})") from None


def read_mot_tracks(path: str, ground_truth: bool = False) -> list[TrackBox]:
    """Boxes of a MOTChallenge text file; ``ground_truth`` drops ignored entries and non-person classes."""
    file = Path(path)
    if not file.exists():
        raise DataError(
            f"tracks file {path} does not exist; set crops.tracks_file (or put gt/gt.txt in the sequence folder)"
        )
    boxes = []
    for number, line in enumerate(_read_lines(file, "crops.tracks_file"), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < len(MOT_COLUMNS):
            raise DataError(
                f"{origin}: {len(cells)} columns, a MOTChallenge line needs at least "
                f"{len(MOT_COLUMNS)} ({', '.join(MOT_COLUMNS)}, ...)"
            )
        frame, track = _integer(cells[0], "frame", origin), _integer(cells[1], "id", origin)
        box = [_number(cell, name, origin) for cell, name in zip(cells[2:6], MOT_COLUMNS[2:6])]
        if ground_truth and len(cells) >= 8:
            flag, kind = _number(cells[6], "flag", origin), _number(cells[7], "class", origin)
            if flag == 0 or int(kind) not in MOT_PERSON_CLASSES:
                continue
        if track < 0:
            continue  # an untracked detection
        boxes.append(TrackBox(frame, track, *box, origin=origin))
    return boxes


def kitti_frame_files(folder: str, stream: int | None) -> dict[int, Path]:
    """frame -> file of DeepStream's per-frame KITTI dumps of one stream (``stream`` None: the only one)."""
    directory = Path(folder)
    if not directory.is_dir():
        raise DataError(
            f"crops.tracks_file: {folder} is not a folder; with crops.format=kitti it is DeepStream's "
            "kitti-track-output-dir (one <stream>_<frame>.txt file per frame)"
        )
    by_stream: dict[int, dict[int, Path]] = {}
    for file in sorted(directory.glob("*.txt")):
        match = _KITTI_NAME.match(file.name)
        if not match:
            continue
        kind = not_a_regular_file(file)
        if kind is not None:  # a FIFO would block the read; a folder or a link loop is not a dump
            raise DataError(f"crops.tracks_file: {file} is {kind}, not a KITTI text file; remove it from {folder}")
        frames = by_stream.setdefault(int(match.group(1)), {})
        frame = int(match.group(2))
        if frame in frames:  # e.g. 00_000_000007.txt and 00_001_000007.txt, or 0_7.txt and 00_000007.txt
            raise DataError(
                f"crops.tracks_file: {frames[frame].name} and {file.name} in {folder} are both frame "
                f"{frame} of stream {match.group(1)}; keep one dump per stream and frame"
            )
        frames[frame] = file
    if not by_stream:
        raise DataError(
            f"crops.tracks_file: {folder} holds no <stream>_<frame>.txt files (DeepStream's KITTI tracker output)"
        )
    if stream is None:
        if len(by_stream) > 1:
            raise DataError(
                f"crops.tracks_file: {folder} holds the streams {sorted(by_stream)}; one camera is one "
                "stream, so choose one with crops.stream=N"
            )
        return next(iter(by_stream.values()))
    if stream not in by_stream:
        raise DataError(f"crops.stream={stream}: {folder} has no files of that stream (found {sorted(by_stream)})")
    return by_stream[stream]


def read_kitti_tracks(folder: str, stream: int | None = None, labels: Sequence[str] = ()) -> list[TrackBox]:
    """Boxes of DeepStream's KITTI tracker dumps of one stream; ``labels``: keep only these classes."""
    wanted = {label.lower() for label in labels}
    boxes = []
    for frame, file in sorted(kitti_frame_files(folder, stream).items()):
        for number, line in enumerate(_read_lines(file, "crops.tracks_file"), start=1):
            cells = line.split()
            if not cells:
                continue
            origin = f"{file}:{number}"
            if len(cells) < len(KITTI_COLUMNS):
                raise DataError(
                    f"{origin}: {len(cells)} columns, a KITTI tracker line needs at least "
                    f"{len(KITTI_COLUMNS)} ({' '.join(KITTI_COLUMNS)} ...)"
                )
            if wanted and cells[0].lower() not in wanted:
                continue
            track = _integer(cells[1], "tracking_id", origin)
            if track < 0 or track == KITTI_UNTRACKED_ID:
                continue
            left, top, right, bottom = (_number(cells[i], KITTI_COLUMNS[i], origin) for i in range(5, 9))
            boxes.append(TrackBox(frame, track, left, top, right - left, bottom - top, origin=origin))
    return boxes


def _read_mot(path: str, ground_truth: bool, stream: int | None, labels: Sequence[str]) -> list[TrackBox]:
    return read_mot_tracks(path, ground_truth)


def _read_kitti(path: str, ground_truth: bool, stream: int | None, labels: Sequence[str]) -> list[TrackBox]:
    return read_kitti_tracks(path, stream, labels)


class TrackFormat:
    """A tracks format: its reader and the number of its first frame (MOT counts from 1, DeepStream from 0)."""

    def __init__(self, reader: Callable[..., list[TrackBox]], first_frame: int, description: str):
        self.reader, self.first_frame, self.description = reader, first_frame, description


# crops.format -> how its tracks are read.
TRACK_FORMATS = {
    "mot": TrackFormat(_read_mot, first_frame=1, description="MOTChallenge text file (gt/gt.txt or tracker result)"),
    "kitti": TrackFormat(_read_kitti, first_frame=0, description="DeepStream kitti-track-output-dir"),
}
