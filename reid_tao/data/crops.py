"""Cut the boxes of tracks out of their frames and write them as Market-1501 named crops.

Frames come from a MOTChallenge sequence folder (``img1/000001.jpg``..., folder and suffix from
``seqinfo.ini``), a plain folder of frame images (the n-th image in name order is frame n), or a video file
(OpenCV; frames are decoded in order and skipped frames only grabbed, not decoded).

What a sequence names stays inside it: seqinfo.ini's imDir must be a relative folder without ``..`` and imExt
a plain suffix. Only regular files are read as frames (a FIFO would block the read forever). A video is read
by OpenCV's FFmpeg backend with only video container demuxers allowed (:data:`VIDEO_DEMUXERS`), so a playlist
(``.m3u8``), an ffconcat list or an image pattern given as a video cannot make it read other files.
"""

import configparser
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from reid_tao.data.market import IMAGE_EXTENSIONS
from reid_tao.data.tracks import TrackBox
from reid_tao.errors import DataError
from reid_tao.io.atomic import atomic_write_bytes
from reid_tao.io.regular_files import not_a_regular_file, read_regular_file

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
SEQINFO_MAX_BYTES = 2**20
_IMAGE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
# FFmpeg demuxers of video containers and raw video streams (format_whitelist): not hls, concat, image2, ...
VIDEO_DEMUXERS = (
    "mov",
    "avi",
    "matroska",
    "mpegts",
    "mpeg",
    "mpegvideo",
    "flv",
    "asf",
    "ogg",
    "h264",
    "hevc",
    "mjpeg",
    "rawvideo",
    "m4v",
    "yuv4mpegpipe",
)
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def crop_name(track: int, camera: int, frame: int) -> str:
    """Market-1501 name: ``<track>_c<camera>s1_<frame>_00.jpg``."""
    return f"{track:04d}_c{camera}s1_{frame:06d}_00.jpg"


def _first_origin(boxes: Sequence[TrackBox]) -> str:
    return boxes[0].origin if boxes else "tracks"


def _read_image(path: Path, origin: str) -> np.ndarray:
    try:  # only a regular file: cv2.imread blocks forever on a FIFO
        data = read_regular_file(path)
    except OSError as error:
        raise DataError(
            f"{origin}: frame image {path} cannot be read ({error.strerror}); replace or remove it"
        ) from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{origin}: frame image {path} cannot be read; replace or remove it")
    return image


def _sequence_frames(folder: Path) -> tuple[Path, str]:
    """(image folder, suffix) of a MOTChallenge sequence: seqinfo.ini's imDir/imExt, else img1/ and .jpg."""
    image_dir, suffix = "img1", ".jpg"
    info = folder / "seqinfo.ini"
    if info.exists():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(read_regular_file(info, SEQINFO_MAX_BYTES).decode("utf-8"), source=str(info))
        except OSError as error:
            raise DataError(f"{info}: cannot be read ({error.strerror}); fix or remove it") from None
        except UnicodeDecodeError:
            raise DataError(f"{info}: is not UTF-8 text; fix or remove it") from None
        except configparser.Error as error:
            raise DataError(f"{info}: cannot be parsed ({type(error).__name__}); fix or remove it") from None
        section = parser["Sequence"] if parser.has_section("Sequence") else {}
        image_dir, suffix = section.get("imDir", image_dir), section.get("imExt", suffix)
    relative = PurePosixPath(image_dir.replace("\\", "/"))
    if not image_dir or relative.is_absolute() or ".." in relative.parts:
        raise DataError(
            f"{info}: imDir={image_dir!r} must be a folder inside the sequence folder {folder} "
            "(relative, without '..'); fix seqinfo.ini"
        )
    if not _IMAGE_SUFFIX.match(suffix):
        raise DataError(f"{info}: imExt={suffix!r} must be a file suffix such as .jpg; fix seqinfo.ini")
    return folder / relative, suffix


def _folder_images(path: Path) -> list[Path]:
    """The frame images of a plain folder in name order; an entry named like an image that is not a regular
    file (a FIFO, a folder, a dangling link) is refused rather than skipped, which would renumber the frames."""
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    for image in images:
        kind = not_a_regular_file(image)
        if kind is not None:
            raise DataError(
                f"crops.input: {image} is {kind}, not an image file; the n-th image of {path} is "
                "frame n, so remove it or move it away"
            )
    return images


def iter_frames(source: str, frames: dict[int, list[TrackBox]], first_frame: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, BGR image) for every frame number in ``frames`` (sorted), read from ``source``.

    ``first_frame``: the number of the first frame of a video or plain folder (MOT 1, DeepStream 0). A frame
    that does not exist is reported at the first tracks line that asked for it."""
    path = Path(source)
    wanted = sorted(frames)
    if path.is_dir():
        image_dir, suffix = _sequence_frames(path)
        if image_dir.is_dir():
            for frame in wanted:
                image_path = image_dir / f"{frame:06d}{suffix}"
                if not image_path.exists():  # a FIFO or folder there: _read_image says what it is
                    raise DataError(f"{_first_origin(frames[frame])}: frame {frame} has no image {image_path}")
                yield frame, _read_image(image_path, _first_origin(frames[frame]))
            return
        images = _folder_images(path)
        for frame in wanted:
            position = frame - first_frame
            if not 0 <= position < len(images):
                raise DataError(
                    f"{_first_origin(frames[frame])}: frame {frame} is not among the {len(images)} "
                    f"images of {path} (the first image is frame {first_frame})"
                )
            yield frame, _read_image(images[position], _first_origin(frames[frame]))
        return
    if not path.exists():
        raise DataError(
            f"crops.input: {source} does not exist; give a MOTChallenge sequence folder, a folder of "
            "frames or a video file"
        )
    kind = not_a_regular_file(path)
    if kind is not None:
        raise DataError(
            f"crops.input: {source} is {kind}; give a MOTChallenge sequence folder, a folder of frames or a video file"
        )
    yield from _video_frames(path, frames, wanted, first_frame)


@contextmanager
def _only_video_demuxers() -> Iterator[None]:
    """OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS at each open: allow video container demuxers only, local files
    only (FFmpeg probes the content, so a playlist named .mp4 is refused too); the user's options are kept."""
    previous = os.environ.get(_FFMPEG_OPTIONS)
    ours = f"format_whitelist;{','.join(VIDEO_DEMUXERS)}|protocol_whitelist;file"
    os.environ[_FFMPEG_OPTIONS] = f"{previous}|{ours}" if previous else ours
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FFMPEG_OPTIONS, None)
        else:
            os.environ[_FFMPEG_OPTIONS] = previous


def open_video(path: Path) -> "cv2.VideoCapture":
    """An opened capture of the video file ``path``, or one DataError line."""
    with _only_video_demuxers():  # an absolute path: no "proto:" prefix of the name is taken as a protocol
        capture = cv2.VideoCapture(str(path.resolve()), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise DataError(
            f"crops.input: {path} cannot be opened as a video file by OpenCV's FFmpeg (video containers "
            "only: MP4, AVI, MKV, MPEG-TS, ...; playlists and stream lists are refused); convert it "
            "(e.g. to MP4/H.264 or MJPG AVI) or extract its frames into a folder"
        )
    return capture


def _video_frames(
    path: Path, frames: dict[int, list[TrackBox]], wanted: list[int], first_frame: int
) -> Iterator[tuple[int, np.ndarray]]:
    capture = open_video(path)
    try:
        position, targets = first_frame, iter(wanted)
        target = next(targets, None)
        while target is not None:
            if target < position:  # a frame number before the video's first frame
                raise DataError(
                    f"{_first_origin(frames[target])}: frame {target} is before the first frame "
                    f"({first_frame}) of {path}"
                )
            if position < target:
                if not capture.grab():  # skip without decoding
                    break
                position += 1
                continue
            ok, image = capture.read()
            if not ok:
                break
            yield target, image
            position += 1
            target = next(targets, None)
        if target is not None:
            raise DataError(
                f"{_first_origin(frames[target])}: frame {target} is past the end of {path} "
                f"(it has {position - first_frame} frames, the first is frame {first_frame})"
            )
    finally:
        capture.release()


def _write_file(path: Path, data: bytes) -> None:
    """The project's atomic writer (a fresh O_EXCL temporary sibling, never a fixed name a link could be planted
    at): a crop is complete or absent. No fsync per crop: there are thousands, and a lost crop after a power
    cut costs nothing."""
    atomic_write_bytes(path, data, fsync=False)


def check_unique(boxes: Sequence[TrackBox]) -> None:
    """One box per (frame, track): a second one would be written over the first crop of the same name."""
    seen: dict[tuple[int, int], str] = {}
    for box in boxes:
        first = seen.setdefault((box.frame, box.track), box.origin)
        if first != box.origin:
            raise DataError(
                f"{box.origin}: track {box.track} already has a box in frame {box.frame} ({first}); "
                "one crop per track and frame: remove the duplicate lines"
            )


@dataclass
class CropSummary:
    written: int = 0
    frames: int = 0
    cut_off: int = 0  # boxes with too much of their area outside the frame
    too_small: int = 0  # boxes lower than min_height once clipped
    tracks: int = 0


def clip_box(box: TrackBox, width: int, height: int) -> tuple[tuple[int, int, int, int], float]:
    """The box in whole pixels clipped to the frame, as (x0, y0, x1, y1), and the share of it inside."""
    x0, y0 = int(round(box.left)), int(round(box.top))
    x1, y1 = int(round(box.left + box.width)), int(round(box.top + box.height))
    area = max(x1 - x0, 0) * max(y1 - y0, 0)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    inside = max(cx1 - cx0, 0) * max(cy1 - cy0, 0)
    return (cx0, cy0, cx1, cy1), (inside / area if area > 0 else 0.0)


def write_crops(
    boxes: Sequence[TrackBox],
    source: str,
    output_dir: str,
    camera: int = 1,
    frame_step: int = 1,
    min_height: int = 0,
    min_inside: float = 0.9,
    first_frame: int = 1,
) -> CropSummary:
    """Write every box of every ``frame_step``-th frame (counted from ``first_frame``) as a Market-named JPEG.

    A box is clipped to the frame; it is skipped when less than ``min_inside`` of it lies inside the frame (a
    person cut off by the frame edge) or when it is lower than ``min_height`` pixels once clipped."""
    check_unique(boxes)
    by_frame: dict[int, list[TrackBox]] = defaultdict(list)
    for box in boxes:
        if (box.frame - first_frame) % frame_step == 0:
            by_frame[box.frame].append(box)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary, tracks = CropSummary(), set()
    for frame, image in iter_frames(source, by_frame, first_frame):
        summary.frames += 1
        height, width = image.shape[:2]
        for box in by_frame[frame]:
            (x0, y0, x1, y1), inside = clip_box(box, width, height)
            if inside < min_inside or inside == 0.0:
                summary.cut_off += 1
                continue
            if y1 - y0 < max(min_height, 1):
                summary.too_small += 1
                continue
            ok, encoded = cv2.imencode(".jpg", image[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise DataError(f"{box.origin}: the crop could not be encoded as JPEG")
            _write_file(output / crop_name(box.track, camera, frame), encoded.tobytes())
            summary.written += 1
            tracks.add(box.track)
    summary.tracks = len(tracks)
    return summary
