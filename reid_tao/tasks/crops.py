"""`reid crops`: Market-named training crops from a tracker's output (or tracking ground truth).

One sequence, video or DeepStream stream is one camera (crops.camera); track ids become the person ids of
the names, and they identify a person only within that camera (a tracker knows nothing across cameras).
"""

import logging
from pathlib import Path

from omegaconf import DictConfig

from reid_tao.data.crops import write_crops
from reid_tao.data.tracks import TRACK_FORMATS
from reid_tao.engine.status import StatusFile
from reid_tao.errors import ConfigError, DataError
from reid_tao.tasks.common import prepare_task, reported

log = logging.getLogger("reid_tao.crops")


def _tracks_file(crops: DictConfig) -> str:
    if crops.tracks_file:
        return crops.tracks_file
    if crops.format == "mot" and Path(crops.input).is_dir():
        return str(Path(crops.input) / "gt" / "gt.txt")
    what = "a tracker result file" if crops.format == "mot" else "DeepStream's kitti-track-output-dir"
    raise ConfigError(f"crops.tracks_file is not set; point it to {what}")


def _check_fields(crops: DictConfig) -> None:
    for field in ("input", "output_dir"):
        if not crops[field]:
            raise ConfigError(f"crops.{field} is not set; see `reid crops --help`")
    if crops.format != "kitti":
        for field in ("stream", "labels"):
            if crops[field]:
                raise ConfigError(f"crops.{field} applies to crops.format=kitti only; remove it")
    _check_output_dir(Path(crops.output_dir), Path(crops.input))


def _check_output_dir(output: Path, source: Path) -> None:
    """A folder outside the frames: crops written among them would be read as frames by the next run (and
    overwrite the first run's crops with crops of crops)."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"crops.output_dir {output} is an existing file; name a folder")
    if source.is_dir():
        out, frames = output.resolve(), source.resolve()
        if out == frames or frames in out.parents:
            raise ConfigError(
                f"crops.output_dir {output} is inside crops.input {source}: the crops would be read "
                "as frames by the next run; choose a folder outside it"
            )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a parent folder should be, no permission, ...
        reason = (
            "a file is in the way"
            if isinstance(error, (FileExistsError, NotADirectoryError))
            else (error.strerror or str(error))
        )
        raise ConfigError(f"cannot create crops.output_dir {output} ({reason}); name a writable folder") from None


@reported("crops")
def run(config: DictConfig, status: StatusFile) -> Path:
    crops = config.crops
    _check_fields(crops)
    prepare_task(config, "crops")
    track_format = TRACK_FORMATS[crops.format]
    tracks_file = _tracks_file(crops)
    # gt/gt.txt holds ignored entries and non-person classes; a tracker's result file does not
    ground_truth = crops.format == "mot" and not crops.tracks_file
    boxes = track_format.reader(tracks_file, ground_truth, crops.stream, list(crops.labels))
    if not boxes:
        raise DataError(f"{tracks_file}: no boxes to crop (empty, or every entry filtered out)")
    summary = write_crops(
        boxes,
        crops.input,
        crops.output_dir,
        camera=crops.camera,
        frame_step=crops.frame_step,
        min_height=crops.min_height,
        min_inside=crops.min_inside,
        first_frame=track_format.first_frame,
    )
    log.info(
        "wrote %d crops of %d tracks from %d frames to %s (camera %d); skipped %d boxes cut off by the frame "
        "edge (crops.min_inside) and %d lower than crops.min_height",
        summary.written,
        summary.tracks,
        summary.frames,
        crops.output_dir,
        crops.camera,
        summary.cut_off,
        summary.too_small,
    )
    status.kpi = {"crops": float(summary.written), "tracks": float(summary.tracks)}
    return Path(crops.output_dir)
