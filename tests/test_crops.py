"""`reid crops`: Market-named crops from MOTChallenge sequences, videos and DeepStream KITTI dumps."""

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from reid_tao.cli import main
from reid_tao.data.tracks import read_kitti_tracks, read_mot_tracks
from reid_tao.errors import DataError

WIDTH, HEIGHT, FRAMES = 160, 120, 6
# (track, left, top, width, height) per frame f: box moves right by 4 px per frame
TRACKS = [(1, 10, 20, 24, 60), (2, 80, 30, 30, 70), (3, 140, 10, 30, 70)]  # track 3 sticks out on the right


def frame_image(frame: int) -> np.ndarray:
    """RGB frame of 4x4 blocks of random colours: any misplaced crop differs clearly from the true one."""
    rng = np.random.default_rng(frame)
    blocks = rng.integers(0, 256, (HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)


def box_at(track, frame):
    _, left, top, width, height = track
    return left + 4 * (frame - 1), top, width, height


def gt_lines(frames=range(1, FRAMES + 1)):
    lines = []
    for frame in frames:
        for track in TRACKS:
            left, top, width, height = box_at(track, frame)
            lines.append(f"{frame},{track[0]},{left},{top},{width},{height},1,1,1.0")
    lines.append("2,9,0,0,20,50,0,1,1.0")  # ignored entry (flag 0)
    lines.append("2,8,0,0,20,50,1,4,1.0")  # not a person (class 4)
    return lines


def make_sequence(root: Path) -> Path:
    seq = root / "MOT-01"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    for frame in range(1, FRAMES + 1):
        Image.fromarray(frame_image(frame)).save(seq / "img1" / f"{frame:06d}.png")
    (seq / "seqinfo.ini").write_text(
        "[Sequence]\nname=MOT-01\nimDir=img1\nframeRate=30\n"
        f"seqLength={FRAMES}\nimWidth={WIDTH}\nimHeight={HEIGHT}\nimExt=.png\n"
    )
    (seq / "gt" / "gt.txt").write_text("\n".join(gt_lines()) + "\n")
    return seq


def best_offset(crop: np.ndarray, frame: np.ndarray, x0: int, y0: int):
    """(mean abs difference at the true place, the offset within +-2 px with the least difference)."""
    h, w = crop.shape[:2]
    errors = {}
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            if y0 + dy < 0 or x0 + dx < 0 or y0 + dy + h > frame.shape[0] or x0 + dx + w > frame.shape[1]:
                continue
            region = frame[y0 + dy : y0 + dy + h, x0 + dx : x0 + dx + w].astype(float)
            errors[(dx, dy)] = np.abs(region - crop.astype(float)).mean()
    return errors[(0, 0)], min(errors, key=errors.get)


def run_crops(tmp_path, *overrides) -> int:
    return main(["crops", f"results_dir={tmp_path / 'results'}", *overrides])


def test_crops_from_mot_sequence(tmp_path):
    seq = make_sequence(tmp_path)
    out = tmp_path / "crops"
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={out}", "crops.camera=3") == 0
    names = sorted(p.name for p in out.iterdir())
    # tracks 1 and 2 in every frame; track 3 sticks out of the frame (cut off) and is skipped; ignored and
    # non-person gt entries are dropped
    expected = sorted(f"{track:04d}_c3s1_{frame:06d}_00.jpg" for frame in range(1, FRAMES + 1) for track in (1, 2))
    assert names == expected
    for frame in (1, 4):
        for track in TRACKS[:2]:
            left, top, width, height = box_at(track, frame)
            crop = np.asarray(Image.open(out / f"{track[0]:04d}_c3s1_{frame:06d}_00.jpg").convert("RGB"))
            assert crop.shape == (height, width, 3)
            error, offset = best_offset(crop, frame_image(frame), left, top)
            assert error < 20 and offset == (0, 0)


def test_crops_frame_step_min_height_and_clipping(tmp_path):
    seq = make_sequence(tmp_path)
    out = tmp_path / "crops"
    assert (
        run_crops(
            tmp_path,
            f"crops.input={seq}",
            f"crops.output_dir={out}",
            "crops.frame_step=2",
            "crops.min_height=65",
            "crops.min_inside=0.5",
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    # frames 1, 3, 5; track 1 (60 px) is too low; track 3 is kept once half of it is inside, clipped to the frame
    assert [n for n in names if n.startswith("0001")] == []
    assert [n[:4] + n[10:16] for n in names] == ["0002000001", "0002000003", "0002000005", "0003000001"]
    crop = np.asarray(Image.open(out / "0003_c1s1_000001_00.jpg"))
    assert crop.shape == (70, WIDTH - 140, 3)  # 30 px wide box at x=140 clipped at the right edge
    # track 3 in frame 3 starts at x=148: only 12 of 30 px inside, skipped


def test_crops_from_video_match_decoded_frames(tmp_path):
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in range(1, FRAMES + 1):
        writer.write(cv2.cvtColor(frame_image(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    tracks = tmp_path / "result.txt"  # a tracker's result: frame,id,left,top,w,h,conf,-1,-1,-1
    tracks.write_text(
        "\n".join(
            f"{f},{t[0]},{box_at(t, f)[0]},{t[2]},{t[3]},{t[4]},0.9,-1,-1,-1"
            for f in range(1, FRAMES + 1)
            for t in TRACKS[:2]
        )
        + "\n"
    )
    out = tmp_path / "crops"
    assert (
        run_crops(
            tmp_path,
            f"crops.input={video}",
            f"crops.tracks_file={tracks}",
            f"crops.output_dir={out}",
            "crops.frame_step=3",
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{t:04d}_c1s1_{f:06d}_00.jpg" for f in (1, 4) for t in (1, 2)
    )
    capture = cv2.VideoCapture(str(video))
    decoded = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(FRAMES)]
    capture.release()
    for frame in (1, 4):
        for track in TRACKS[:2]:
            left, top, width, height = box_at(track, frame)
            crop = np.asarray(Image.open(out / f"{track[0]:04d}_c1s1_{frame:06d}_00.jpg").convert("RGB"))
            assert crop.shape == (height, width, 3)
            error, offset = best_offset(crop, decoded[frame - 1], left, top)
            assert error < 20 and offset == (0, 0)


def write_kitti(folder: Path, stream: int = 0):
    folder.mkdir(exist_ok=True)
    for frame in range(FRAMES):  # DeepStream counts frames from 0
        lines = []
        for track in TRACKS[:2]:
            left, top, width, height = box_at(track, frame + 1)
            lines.append(
                f"person {track[0]} 0.0 0 0.0 {left:.6f} {top:.6f} {left + width:.6f} {top + height:.6f} "
                "0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.87"
            )
        lines.append("bag 7 0.0 0 0.0 1 1 20 20 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.5")
        lines.append(f"person {0xFFFFFFFFFFFFFFFF} 0.0 0 0.0 1 1 20 60 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.5")
        # deepstream-app's name: app index, stream (source pad index), frame
        (folder / f"00_{stream:03d}_{frame:06d}.txt").write_text("\n".join(lines) + "\n")


def test_crops_from_deepstream_kitti(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for frame in range(1, FRAMES + 1):
        Image.fromarray(frame_image(frame)).save(frames / f"f{frame:04d}.png")
    dump = tmp_path / "kitti"
    write_kitti(dump)
    out = tmp_path / "crops"
    assert (
        run_crops(
            tmp_path,
            "crops.format=kitti",
            f"crops.input={frames}",
            f"crops.tracks_file={dump}",
            f"crops.output_dir={out}",
            "crops.labels=[person]",
            "crops.camera=2",
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{t:04d}_c2s1_{f:06d}_00.jpg" for f in range(FRAMES) for t in (1, 2))
    left, top, width, height = box_at(TRACKS[1], 3)
    crop = np.asarray(Image.open(out / "0002_c2s1_000002_00.jpg").convert("RGB"))
    assert crop.shape == (height, width, 3)
    assert best_offset(crop, frame_image(3), left, top)[1] == (0, 0)
    boxes = read_kitti_tracks(str(dump))  # no label filter: the bag is kept, the untracked person is not
    assert {b.track for b in boxes} == {1, 2, 7}


def test_crops_bad_input_names_file_and_line(tmp_path, capsys):
    seq = make_sequence(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,20,24,60,1\n2,1,10,20\n")
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.tracks_file={bad}", f"crops.output_dir={tmp_path}/o") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2" in err and "columns" in err

    missing = tmp_path / "missing.txt"
    missing.write_text("1,1,10,20,24,60,1\n99,1,10,20,24,60,1\n")
    assert (
        run_crops(tmp_path, f"crops.input={seq}", f"crops.tracks_file={missing}", f"crops.output_dir={tmp_path}/o") != 0
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{missing}:2" in err and "000099.png" in err

    with pytest.raises(DataError, match=r"bad2.txt:1: column 'left' is not a number"):
        (tmp_path / "bad2.txt").write_text("1,1,x,20,24,60\n")
        read_mot_tracks(str(tmp_path / "bad2.txt"))

    assert run_crops(tmp_path, "crops.format=yolo", f"crops.input={seq}", f"crops.output_dir={tmp_path}/o") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "crops.format='yolo'" in err and "'mot'" in err


def test_kitti_multi_stream_needs_stream(tmp_path):
    dump = tmp_path / "kitti"
    write_kitti(dump, stream=0)
    write_kitti(dump, stream=1)
    with pytest.raises(DataError, match="crops.stream"):
        read_kitti_tracks(str(dump))
    assert {b.origin.split("/")[-1][:6] for b in read_kitti_tracks(str(dump), stream=1)} == {"00_001"}


# --------------------------------------------------------------------------- box and track edge cases
def test_a_box_past_the_bottom_edge_is_clipped(tmp_path):
    seq = make_sequence(tmp_path)
    tracks = tmp_path / "result.txt"  # 80 px high from y=70: 50 px inside a 120 px frame
    tracks.write_text("1,5,20,70,30,80,0.9,-1,-1,-1\n")
    out = tmp_path / "crops"
    assert (
        run_crops(
            tmp_path,
            f"crops.input={seq}",
            f"crops.tracks_file={tracks}",
            f"crops.output_dir={out}",
            "crops.min_inside=0.5",
        )
        == 0
    )
    crop = np.asarray(Image.open(out / "0005_c1s1_000001_00.jpg").convert("RGB"))
    assert crop.shape == (HEIGHT - 70, 30, 3)
    assert best_offset(crop, frame_image(1), 20, 70)[1] == (0, 0)
    # 50 of its 80 rows inside: cut off by the bottom edge under the default crops.min_inside=0.9
    assert (
        run_crops(
            tmp_path, f"crops.input={seq}", f"crops.tracks_file={tracks}", f"crops.output_dir={tmp_path / 'default'}"
        )
        == 0
    )
    assert not any((tmp_path / "default").iterdir())


def test_untracked_mot_detections_are_not_cropped(tmp_path):
    seq = make_sequence(tmp_path)
    tracks = tmp_path / "result.txt"  # a tracker's result with its untracked detections (id -1)
    tracks.write_text("1,-1,10,20,24,60,0.9,-1,-1,-1\n1,4,80,30,30,70,0.9,-1,-1,-1\n2,-1,10,20,24,60,0.9,-1,-1,-1\n")
    out = tmp_path / "crops"
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.tracks_file={tracks}", f"crops.output_dir={out}") == 0
    assert [p.name for p in out.iterdir()] == ["0004_c1s1_000001_00.jpg"]


# --------------------------------------------------------------------------- nothing read or written outside
def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_crops_never_follow_a_link_planted_at_a_temporary_name(tmp_path):
    seq = make_sequence(tmp_path)
    out = tmp_path / "crops"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    name = "0001_c1s1_000001_00.jpg"
    (out / f".{name}.tmp").symlink_to(outside)  # the fixed temporary name the crops writer used
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={out}") == 0
    assert outside.read_text() == "keep me"
    assert Image.open(out / name).size == (24, 60)


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("imDir", "{other}", "must be a folder inside"),
        ("imDir", "../other", "imDir='../other' must be a folder inside"),
        ("imDir", "img1/../../other", "must be a folder inside"),
        ("imExt", "/../../other/000001.png", "imExt='/../../other/000001.png' must be a file suffix"),
    ],
)
def test_seqinfo_cannot_point_frames_outside_the_sequence(tmp_path, capsys, key, value, says):
    seq = make_sequence(tmp_path)
    other = tmp_path / "other"  # frames of somebody else's camera, beside the sequence
    other.mkdir()
    for frame in range(1, FRAMES + 1):
        Image.fromarray(frame_image(frame)).save(other / f"{frame:06d}.png")
    info = seq / "seqinfo.ini"
    lines = [line for line in info.read_text().splitlines() if not line.startswith(f"{key}=")]
    info.write_text("\n".join(lines + [f"{key}={value.format(other=other)}"]) + "\n")
    out = tmp_path / "crops"
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={out}") == 2
    assert says in one_line(capsys) and not any(out.iterdir())


def write_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    for frame in range(1, FRAMES + 1):
        writer.write(cv2.cvtColor(frame_image(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.mark.parametrize(
    "name, content",
    [
        ("cam.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{video}\n#EXT-X-ENDLIST\n"),
        ("cam.avi", "ffconcat version 1.0\nfile elsewhere/secret.avi\n"),
    ],
)  # FFmpeg reads the content, not the name
def test_a_playlist_given_as_the_video_is_refused(tmp_path, capsys, name, content):
    (tmp_path / "elsewhere").mkdir()
    video = write_video(tmp_path / "elsewhere" / "secret.avi")
    playlist = tmp_path / name
    playlist.write_text(content.format(video=video))
    tracks = tmp_path / "result.txt"
    tracks.write_text("1,1,10,20,24,60,0.9,-1,-1,-1\n")
    out = tmp_path / "crops"
    assert run_crops(tmp_path, f"crops.input={playlist}", f"crops.tracks_file={tracks}", f"crops.output_dir={out}") == 2
    assert "video containers only" in one_line(capsys) and not any(out.iterdir())
    # the user's own FFmpeg options are kept, and restored afterwards
    assert "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ


# --------------------------------------------------------------------------- no input overwritten or lost
@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_folder_inside_the_input_is_refused(tmp_path, capsys, where):
    seq = make_sequence(tmp_path)
    out = seq if where == "same" else seq / "img1" / "crops"
    before = sorted(p.relative_to(seq) for p in seq.rglob("*"))
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={out}") == 2
    assert "is inside crops.input" in one_line(capsys)
    assert sorted(p.relative_to(seq) for p in seq.rglob("*")) == before


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    seq = make_sequence(tmp_path)
    (tmp_path / "crops").write_text("")
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={tmp_path / 'crops'}") == 2
    assert "is an existing file" in one_line(capsys)
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={tmp_path / 'crops' / 'cam1'}") == 2
    assert "a file is in the way" in one_line(capsys)


def test_duplicate_frame_and_track_lines_are_refused(tmp_path, capsys):
    seq = make_sequence(tmp_path)
    tracks = tmp_path / "result.txt"
    tracks.write_text("1,1,10,20,24,60,0.9,-1,-1,-1\n2,1,10,20,24,60,0.9,-1,-1,-1\n1,1,50,20,24,60,0.9,-1,-1,-1\n")
    out = tmp_path / "crops"
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.tracks_file={tracks}", f"crops.output_dir={out}") == 2
    err = one_line(capsys)
    assert f"{tracks}:3: track 1 already has a box in frame 1 ({tracks}:1)" in err and not any(out.iterdir())


def test_two_kitti_files_of_one_stream_and_frame_are_refused(tmp_path):
    dump = tmp_path / "kitti"
    write_kitti(dump, stream=0)
    (dump / "01_000_000003.txt").write_text((dump / "00_000_000003.txt").read_text())  # another app instance
    with pytest.raises(DataError, match=r"00_000_000003.txt and 01_000_000003.txt .* are both frame 3 of stream 0"):
        read_kitti_tracks(str(dump))


def test_deepstream_app_sources_are_streams(tmp_path):
    """deepstream-app names its dumps <app>_<stream>_<frame>: two sources of one app are two streams, not one
    stream whose frames collide (one of each pair was silently dropped)."""
    dump = tmp_path / "kitti"
    write_kitti(dump, stream=0)
    write_kitti(dump, stream=1)
    with pytest.raises(DataError, match=r"the streams \[0, 1\]"):
        read_kitti_tracks(str(dump))
    assert len(read_kitti_tracks(str(dump), stream=1)) == FRAMES * 3  # 2 people and a bag per frame


# --------------------------------------------------------------------------- no hang, no traceback
@contextmanager
def no_hang(seconds: int = 30):
    """A read that blocks (what these tests guard against) is interrupted by SIGALRM: a failure, not a test run
    that never ends."""

    def stop(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def plain_frames(folder: Path) -> Path:
    folder.mkdir()
    for frame in range(1, FRAMES + 1):
        Image.fromarray(frame_image(frame)).save(folder / f"f{frame:04d}.png")
    return folder


@pytest.mark.parametrize("where", ["kitti_dump", "plain_frame", "sequence_frame"])
def test_a_fifo_among_the_inputs_is_one_line_not_a_hang(tmp_path, capsys, where):
    frames, dump = plain_frames(tmp_path / "frames"), tmp_path / "kitti"
    write_kitti(dump)
    args = ["crops.format=kitti", f"crops.input={frames}", f"crops.tracks_file={dump}"]
    if where == "kitti_dump":
        fifo = dump / "00_000_000009.txt"
    elif where == "plain_frame":
        fifo = frames / "f0002.png"
        fifo.unlink()
    else:
        seq = make_sequence(tmp_path)
        fifo = seq / "img1" / "000002.png"
        fifo.unlink()
        args = [f"crops.input={seq}"]
    os.mkfifo(fifo)
    with no_hang():
        assert run_crops(tmp_path, *args, f"crops.output_dir={tmp_path / 'crops'}") == 2
    err = one_line(capsys)
    assert str(fifo) in err and "FIFO" in err


@pytest.mark.parametrize(
    "fmt, line, says",
    [
        ("mot", "1,1,nan,20,24,60,1", "column 'left' is not a finite number: 'nan'"),
        ("mot", "1,1,10,20,inf,60,1", "column 'width' is not a finite number: 'inf'"),
        ("mot", "nan,1,10,20,24,60,1", "column 'frame' is not a finite number"),
        ("mot", "1.5,1,10,20,24,60,1", "column 'frame' is not a whole number"),
        ("mot", "1," + "9" * 5000 + ",10,20,24,60,1", "column 'id' is not a whole number of at most 20 digits"),
        ("mot", "1,1," + "9" * 5000 + ",20,24,60,1", "column 'left' is not a finite number: '9999"),
        ("kitti", "person 1 0 0 0 -inf 1 20 60", "column 'left' is not a finite number: '-inf'"),
        ("kitti", "person " + "7" * 5000 + " 0 0 0 1 1 20 60", "column 'tracking_id' is not a whole number of at most"),
    ],
)
def test_numbers_that_are_not_finite_or_too_long_are_one_line(tmp_path, fmt, line, says):
    if fmt == "mot":
        path = tmp_path / "result.txt"
        path.write_text(line + "\n")
        reader = lambda: read_mot_tracks(str(path))  # noqa: E731
    else:
        path = tmp_path / "kitti"
        path.mkdir()
        (path / "000_000001.txt").write_text(line + "\n")
        reader = lambda: read_kitti_tracks(str(path))  # noqa: E731
    with pytest.raises(DataError) as raised:
        reader()
    message = str(raised.value)
    assert says in message and ":1: " in message and len(message) < 300


@pytest.mark.parametrize("kind", ["folder", "loop"])
def test_a_folder_or_a_link_loop_named_like_a_kitti_file_is_one_line(tmp_path, kind):
    dump = tmp_path / "kitti"
    write_kitti(dump)
    odd = dump / "00_000_000009.txt"
    if kind == "folder":
        odd.mkdir()
    else:
        odd.symlink_to(odd)
    with pytest.raises(DataError, match="00_000_000009.txt is (a folder|unreadable .*symbolic links)"):
        read_kitti_tracks(str(dump))


def test_a_seqinfo_that_is_not_utf8_is_one_line(tmp_path, capsys):
    seq = make_sequence(tmp_path)
    (seq / "seqinfo.ini").write_bytes(b"[Sequence]\nname=caf\xe9\nimDir=img1\n")
    assert run_crops(tmp_path, f"crops.input={seq}", f"crops.output_dir={tmp_path / 'crops'}") == 2
    assert "seqinfo.ini: is not UTF-8 text" in one_line(capsys)
