"""A small synthetic dataset in Market-1501 layout, for tests, demos and smoke-training without downloads.

Each identity is a person-like figure (hair/head, torso with arms, legs, shoes, optional bag) whose
colours, torso pattern, bag side and build are identity-specific; hues follow a 2-D low-discrepancy
sequence so identities are spread over colour space. Each camera adds its own background, colour
cast and brightness; each image adds translation/scale jitter and Gaussian noise. Identity is thus
learnable but not a pixel copy across cameras.

Layout (Market-1501 naming ``{pid:04d}_c{cam}s1_{frame:06d}_00.jpg``)::

    root/bounding_box_train/  train ids 1..num_train_ids, every camera
    root/query/               one image per (test id, camera) for half of the cameras
    root/bounding_box_test/   the other test images, distractors (pid 0000) and junk (pid -1)
    root/.synthetic_market.json   marker: parameters and counts, written last
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from reid_tao.errors import ConfigError, DataError
from reid_tao.io.atomic import staging_dir

__all__ = ["generate_synthetic_market", "SyntheticConfigError", "MARKER_NAME", "SPLIT_FOLDERS"]

MARKER_NAME = ".synthetic_market.json"
SPLIT_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
_FORMAT_VERSION = 1
_JPEG_QUALITY = 90

# The figure is drawn on a canonical 128 x 64 canvas and scaled to the requested size.
_CANON_H, _CANON_W = 128.0, 64.0
# Additive low-discrepancy steps (R2 sequence): consecutive pids get well separated hue pairs.
_HUE_STEP_UPPER, _HUE_STEP_LOWER = 0.7548776662466927, 0.5698402909980532

_PLAIN, _HSTRIPES, _VSTRIPES, _CHECKS = range(4)
_NO_BAG, _BAG_LEFT, _BAG_RIGHT = range(3)
_HAIR_COLOURS = np.array([[25, 20, 18], [70, 45, 25], [140, 100, 60], [200, 170, 110], [110, 110, 110]], float)
_SKIN_COLOURS = np.array([[235, 200, 170], [200, 150, 110], [150, 100, 70], [95, 65, 45]], float)


class SyntheticConfigError(ConfigError, ValueError):
    """Invalid generator arguments (also a ValueError for library callers)."""


@dataclass(frozen=True)
class _Appearance:
    upper: np.ndarray
    lower: np.ndarray
    pattern_colour: np.ndarray
    bag_colour: np.ndarray
    hair: np.ndarray
    skin: np.ndarray
    shoes: np.ndarray
    pattern: int
    period: float
    bag: int
    build: float  # extra half-width of torso and legs, canonical pixels


@dataclass(frozen=True)
class _Camera:
    gains: np.ndarray
    shift: float
    sky: np.ndarray
    floor: np.ndarray
    horizon: float  # canonical row where the floor starts


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _appearance(pid: int, seed: int, stream: int) -> _Appearance:
    """Deterministic look of identity ``pid``; ``stream`` separates real ids from distractors."""
    rng = np.random.default_rng([seed, stream, pid])
    hue_offset = np.random.default_rng([seed, 0]).random(2)
    hue_upper = hue_offset[0] + pid * _HUE_STEP_UPPER
    hue_lower = hue_offset[1] + pid * _HUE_STEP_LOWER
    upper = _hsv(hue_upper, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    lower = _hsv(hue_lower, rng.uniform(0.45, 0.9), rng.uniform(0.3, 0.85))
    pattern_kind = int(rng.integers(3))
    if pattern_kind == 0:
        pattern_colour = np.full(3, 240.0)
    elif pattern_kind == 1:
        pattern_colour = np.full(3, 25.0)
    else:
        pattern_colour = _hsv(hue_upper + 0.5, 0.8, 0.9)
    return _Appearance(
        upper=upper,
        lower=lower,
        pattern_colour=pattern_colour,
        bag_colour=_hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.9)),
        hair=_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))],
        skin=_SKIN_COLOURS[rng.integers(len(_SKIN_COLOURS))],
        shoes=_hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.9)),
        pattern=int(rng.integers(4)),
        period=float(rng.choice([5.0, 7.0, 9.0])),
        bag=int(rng.integers(3)),
        build=float(rng.uniform(-2.0, 2.5)),
    )


def _camera(cam: int, seed: int) -> _Camera:
    rng = np.random.default_rng([seed, 3, cam])
    hue = rng.random()
    return _Camera(
        gains=rng.uniform(0.85, 1.15, size=3),
        shift=float(rng.uniform(-15.0, 15.0)),
        sky=_hsv(hue, rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.85)),
        floor=_hsv(hue + rng.uniform(-0.2, 0.2), rng.uniform(0.05, 0.3), rng.uniform(0.25, 0.55)),
        horizon=float(rng.uniform(80.0, 105.0)),
    )


def _background(camera: _Camera, height: int, width: int) -> np.ndarray:
    """The camera's empty scene (sky gradient above the horizon, floor below, camera colour cast)."""
    canon_rows = np.arange(height, dtype=np.float32)[:, None] * (_CANON_H / height)
    shade = 1.0 - 0.15 * canon_rows / _CANON_H
    column = np.where((canon_rows >= camera.horizon)[..., None], camera.floor, camera.sky * shade[..., None])
    scene = np.broadcast_to(column * camera.gains + camera.shift, (height, width, 3))
    return scene.astype(np.float32)


class _Painter:
    """Renders images of one dataset: per-camera scenes and a noise bank are made once."""

    def __init__(self, cameras: dict[int, _Camera], height: int, width: int, seed: int) -> None:
        self.cameras = cameras
        self.height, self.width = height, width
        self.scenes = {cam: _background(camera, height, width) for cam, camera in cameras.items()}
        # Drawing fresh normals for every pixel dominated the time: take random windows of a bank.
        self.pixels = height * width * 3
        self.noise = np.random.default_rng([seed, 5]).standard_normal(4 * self.pixels, dtype=np.float32) * 5.0

    def render(
        self,
        look: _Appearance | None,
        cam: int,
        rng: np.random.Generator,
        zoom: float = 1.0,
        shift_down: float = 0.0,
    ) -> np.ndarray:
        """One RGB uint8 image; ``look=None`` draws clutter only; ``zoom>1`` gives a partial crop."""
        camera, height, width = self.cameras[cam], self.height, self.width
        scale = rng.uniform(0.9, 1.1) * zoom
        dx, dy = rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0) + shift_down
        # Inverse map: output pixel -> canonical figure coordinates (u across, v down), kept as a
        # row and a column so masks broadcast to (height, width) only when combined.
        u = (np.arange(width, dtype=np.float32) * (_CANON_W / width) - _CANON_W / 2 - dx) / scale + _CANON_W / 2
        v = (np.arange(height, dtype=np.float32) * (_CANON_H / height) - _CANON_H / 2 - dy) / scale + _CANON_H / 2
        u, v = u[None, :], v[:, None]

        # Paint part labels (0 = background), colour them through the palette in one lookup.
        labels, palette = _clutter_labels(rng, u, v) if look is None else _figure_labels(look, u, v)
        palette = (palette * camera.gains + camera.shift).astype(np.float32)
        image = palette[labels]
        background = labels == 0
        scene_offset = (rng.normal(0.0, 6.0, size=3) * camera.gains).astype(np.float32)
        image[background] = self.scenes[cam][background] + scene_offset
        start = int(rng.integers(0, 3 * self.pixels))
        image += self.noise[start : start + self.pixels].reshape(image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)


def _clutter_labels(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A few boxes (poles, signs, cars): an empty-scene detection."""
    labels = np.zeros((v.shape[0], u.shape[1]), dtype=np.intp)
    num_boxes = int(rng.integers(2, 5))
    palette = np.zeros((num_boxes + 1, 3))
    for box in range(1, num_boxes + 1):
        top, left = rng.uniform(0, _CANON_H - 20), rng.uniform(-10, _CANON_W - 10)
        bottom, right = top + rng.uniform(15, 70), left + rng.uniform(6, 40)
        labels[(v >= top) & (v < bottom) & (u >= left) & (u < right)] = box
        palette[box] = _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 0.9))
    return labels, palette


def _figure_labels(look: _Appearance, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part labels of the figure, painted back to front, and the identity's palette."""
    palette = np.stack(
        [
            np.zeros(3),  # 0 background
            look.lower,  # 1 legs
            look.shoes,  # 2
            look.upper,  # 3 torso
            look.pattern_colour,  # 4
            look.upper * 0.8,  # 5 sleeves
            look.skin,  # 6 hands, face
            look.bag_colour,  # 7
            look.bag_colour * 0.7,  # 8 strap
            look.hair,  # 9
        ]
    )
    labels = np.zeros((v.shape[0], u.shape[1]), dtype=np.intp)
    b = look.build
    left_leg, right_leg = (u >= 21 - b) & (u < 31), (u >= 33) & (u < 43 + b)
    labels[(v >= 70) & (v < 118) & (left_leg | right_leg)] = 1
    left_shoe, right_shoe = (u >= 20 - b) & (u < 31), (u >= 33) & (u < 44 + b)
    labels[(v >= 118) & (v < 124) & (left_shoe | right_shoe)] = 2

    torso = (v >= 27) & (v < 71) & (u >= 19 - b) & (u < 45 + b)
    labels[torso] = 3
    if look.pattern != _PLAIN:
        stripe_v = np.floor((v - 27) / look.period) % 2 == 1
        stripe_u = np.floor((u - 19) / look.period) % 2 == 1
        marked = {_HSTRIPES: stripe_v, _VSTRIPES: stripe_u, _CHECKS: stripe_u ^ stripe_v}[look.pattern]
        labels[torso & marked] = 4
    arm_columns = ((u >= 14 - b) & (u < 19 - b)) | ((u >= 45 + b) & (u < 50 + b))
    labels[(v >= 29) & (v < 64) & arm_columns] = 5
    labels[(v >= 64) & (v < 69) & arm_columns] = 6

    if look.bag != _NO_BAG:
        left = 5 - b if look.bag == _BAG_LEFT else 49 + b
        labels[(v >= 46) & (v < 68) & (u >= left) & (u < left + 10)] = 7
        slope = 0.3 if look.bag == _BAG_LEFT else -0.3
        labels[(v >= 29) & (v < 46) & (np.abs(u - (left + 5 + (v - 46) * slope)) < 1)] = 8

    head = ((u - 32) / 8) ** 2 + ((v - 17) / 10) ** 2 <= 1
    labels[head] = 6
    labels[head & (v < 13)] = 9
    return labels, palette


def _validate(params: dict[str, int]) -> None:
    p = params
    if p["num_train_ids"] < 1 or p["num_test_ids"] < 1:
        raise SyntheticConfigError("num_train_ids and num_test_ids must be >= 1")
    if p["num_train_ids"] + p["num_test_ids"] > 9999:
        raise SyntheticConfigError("num_train_ids + num_test_ids must be <= 9999 (Market pids have 4 digits)")
    if not 2 <= p["num_cameras"] <= 9:
        raise SyntheticConfigError(
            f"num_cameras must be in 2..9 (Market names hold one camera digit and queries need a second camera), "
            f"got {p['num_cameras']}"
        )
    if p["images_per_camera"] < 1:
        raise SyntheticConfigError("images_per_camera must be >= 1")
    if p["height"] < 16 or p["width"] < 8:
        raise SyntheticConfigError(f"image size {p['height']}x{p['width']} is too small (min 16x8)")
    if p["num_distractors"] < 0 or p["num_junk"] < 0:
        raise SyntheticConfigError("num_distractors and num_junk must be >= 0")


def _file_name(pid: int, cam: int, frame: int) -> str:
    return f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s1_{frame:06d}_00.jpg"


def _write_dataset(out: Path, params: dict[str, int]) -> dict[str, int]:
    """Render every image into ``out``; returns the image count per split folder."""
    seed, h, w = params["seed"], params["height"], params["width"]
    cams = range(1, params["num_cameras"] + 1)
    painter = _Painter({c: _camera(c, seed) for c in cams}, h, w, seed)
    rng = np.random.default_rng([seed, 4])
    folders = {name: out / name for name in SPLIT_FOLDERS}
    for folder in folders.values():
        folder.mkdir()
    counts = dict.fromkeys(SPLIT_FOLDERS, 0)
    frame = 0

    def save(split: str, pid: int, cam: int, pixels: np.ndarray) -> None:
        nonlocal frame
        frame += 1
        Image.fromarray(pixels).save(folders[split] / _file_name(pid, cam, frame), quality=_JPEG_QUALITY)
        counts[split] += 1

    train_ids = range(1, params["num_train_ids"] + 1)
    test_ids = range(params["num_train_ids"] + 1, params["num_train_ids"] + params["num_test_ids"] + 1)
    queries_per_id = max(1, params["num_cameras"] // 2)  # < num_cameras, so another camera always remains

    for pid in train_ids:
        look = _appearance(pid, seed, stream=1)
        for cam in cams:
            for _ in range(params["images_per_camera"]):
                save("bounding_box_train", pid, cam, painter.render(look, cam, rng))

    for pid in test_ids:
        look = _appearance(pid, seed, stream=1)
        query_cams = set(rng.choice(list(cams), size=queries_per_id, replace=False).tolist())
        for cam in cams:
            for shot in range(params["images_per_camera"]):
                split = "query" if shot == 0 and cam in query_cams else "bounding_box_test"
                save(split, pid, cam, painter.render(look, cam, rng))

    for index in range(params["num_distractors"]):
        cam = int(rng.choice(list(cams)))
        # Half are strangers (ids never in train/test), half are empty scenes (bad detections).
        look = _appearance(index, seed, stream=2) if index % 2 == 0 else None
        save("bounding_box_test", 0, cam, painter.render(look, cam, rng))

    for _ in range(params["num_junk"]):
        # Junk: tight partial crops of test identities; evaluation must ignore them.
        pid = int(rng.choice(list(test_ids)))
        cam = int(rng.choice(list(cams)))
        zoom = rng.uniform(1.8, 2.4)
        pixels = painter.render(_appearance(pid, seed, stream=1), cam, rng, zoom, zoom * rng.uniform(5, 30))
        save("bounding_box_test", -1, cam, pixels)
    return counts


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    marker = _read_marker(root)
    if marker is None or marker.get("version") != _FORMAT_VERSION or marker.get("params") != params:
        return False
    counts = marker.get("counts", {})
    return all(
        (root / name).is_dir() and sum(1 for _ in (root / name).glob("*.jpg")) == counts.get(name, -1)
        for name in SPLIT_FOLDERS
    )


def _move_into_place(tmp: Path, root: Path, params: dict[str, int]) -> None:
    """Rename the finished ``tmp`` to ``root``; replaces only an older synthetic dataset."""
    try:
        os.rename(tmp, root)  # also succeeds over an empty directory
        return
    except OSError:
        if _is_complete(root, params):  # a concurrent generator finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
    if _read_marker(root) is None:
        raise DataError(f"{root} exists and is not a synthetic Market dataset: choose a new or empty folder")
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.rename(root, old / root.name)
    os.rename(tmp, root)
    shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_market(
    root: str | Path,
    num_train_ids: int = 24,
    num_test_ids: int = 16,
    num_cameras: int = 4,
    images_per_camera: int = 4,
    height: int = 128,
    width: int = 64,
    num_distractors: int = 8,
    num_junk: int = 4,
    seed: int = 0,
) -> Path:
    """Write a deterministic synthetic Market-1501-style dataset under ``root`` and return ``root``.

    Train ids are ``1..num_train_ids``; test ids follow them (disjoint, as in Market). Every id has
    ``images_per_camera`` images on each of ``num_cameras`` cameras. Query holds one image per
    (test id, camera) for ``max(1, num_cameras // 2)`` random cameras of that id, so every query has
    gallery matches on another camera. The gallery also gets ``num_distractors`` images of pid 0000
    and ``num_junk`` of pid -1.

    Idempotent and atomic: if ``root`` already holds a complete dataset made with the same
    arguments (checked through ``root/.synthetic_market.json``) nothing is written; otherwise the
    set is rendered into a temporary sibling folder and renamed into place, replacing an older
    synthetic set but never a folder that is not one (``DataError``). Bad arguments raise
    ``SyntheticConfigError`` (a ``ConfigError`` and ``ValueError``).
    """
    params = {
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "num_cameras": int(num_cameras),
        "images_per_camera": int(images_per_camera),
        "height": int(height),
        "width": int(width),
        "num_distractors": int(num_distractors),
        "num_junk": int(num_junk),
        "seed": int(seed),
    }
    _validate(params)
    root = Path(root).expanduser().absolute()
    if _is_complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _read_marker(root) is None)):
        raise DataError(f"{root} exists and is not a synthetic Market dataset: choose a new or empty folder")

    with staging_dir(root) as tmp:  # mode per umask, removed unless moved into place
        counts = _write_dataset(tmp, params)
        marker = {"format": "synthetic_market", "version": _FORMAT_VERSION, "params": params, "counts": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        _move_into_place(tmp, root, params)
    return root
