"""Tracks of unlabeled crops: which images one tracker followed as one person on one camera.

``reid crops`` names a crop ``<track>_c<camera>s<sequence>_<frame>_00.jpg`` (Market-1501's pattern, with the track
in the person's place), so the images of one track share (track, camera, sequence). A track is one person (a
must-link group for the clustering) but only within its camera: the same number on another camera, or in another
sequence, is another track.
"""

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reid_tao.data.records import ImageRecord

_TRACK_NAME = re.compile(r"^(\d+)_c(\d+)s(\d+)_\d+_\d+\.[A-Za-z]+$")


def track_groups(records: Sequence[ImageRecord]) -> np.ndarray | None:
    """(N,) track index 0..T-1 of each image, when every file name carries a track (see the module docstring);
    None otherwise (names without tracks, e.g. random ones)."""
    keys = []
    for record in records:
        match = _TRACK_NAME.match(Path(record.path).name)
        if match is None:
            return None
        keys.append((int(match.group(1)), int(match.group(2)), int(match.group(3))))
    if not keys:
        return None
    _, groups = np.unique(np.array(keys, dtype=np.int64), axis=0, return_inverse=True)
    return groups.reshape(-1)
