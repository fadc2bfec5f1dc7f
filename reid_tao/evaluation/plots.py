"""Evaluation figures: the CMC curve and a grid of sampled query/gallery matches.

The figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so they
neither change a user's interactive backend nor stay registered as open figures. Files are written
atomically (``reid_tao.io.atomic.atomic_save_figure``) so a crash never leaves half a PNG.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator
from PIL import Image, UnidentifiedImageError

from reid_tao.errors import DataError
from reid_tao.io.atomic import atomic_save_figure

if TYPE_CHECKING:  # only for the annotations; the module works on numpy arrays as well
    from torch import Tensor

# Frame colours of the sampled-matches grid (pure RGB so they are easy to recognise, also by tests).
QUERY_FRAME_RGB = (0, 0, 255)
MATCH_FRAME_RGB = (0, 255, 0)
MISMATCH_FRAME_RGB = (255, 0, 0)
FRAME_LEGEND = "blue = query, green = same identity, red = other identity"

CMC_FIGSIZE_IN = (8.0, 5.0)
CMC_DPI = 120
MATCHES_DPI = 100


def cmc_legend_label(label: str, rank1: float, mean_ap: float) -> str:
    """Legend text of one CMC line, e.g. ``"plain (mAP 85.9%, R1 94.5%)"`` from fractions."""
    return f"{label} (mAP {100.0 * mean_ap:.1f}%, R1 {100.0 * rank1:.1f}%)"


def plot_cmc_curves(
    curves: dict[str, tuple[Sequence[float], float]],
    path: str | Path,
    title: str = "CMC curve",
) -> Path:
    """Draw one CMC line per entry of ``curves`` and save it as a PNG.

    Args:
        curves: label (e.g. "plain", "re-ranked") -> (CMC fractions in 0..1 for ranks 1..max_rank,
            mAP fraction in 0..1).
        path: output PNG file; parent folders are created.
        title: figure title.

    Returns:
        The path written.
    """
    if not curves:
        raise ValueError("plot_cmc_curves needs at least one curve")
    prepared: list[tuple[str, np.ndarray, float]] = []
    for label, (cmc, mean_ap) in curves.items():
        cmc_fraction = _as_numpy(cmc).astype(np.float64).reshape(-1)
        if cmc_fraction.size == 0:
            raise ValueError(f"CMC curve {label!r} is empty")
        if not np.all(np.isfinite(cmc_fraction)) or cmc_fraction.min() < -1e-6 or cmc_fraction.max() > 1 + 1e-6:
            raise ValueError(f"CMC curve {label!r} must hold fractions in 0..1")
        if not 0.0 <= float(mean_ap) <= 1.0 + 1e-6:
            raise ValueError(f"mAP of curve {label!r} must be a fraction in 0..1, got {float(mean_ap)}")
        prepared.append((label, cmc_fraction, float(mean_ap)))

    max_rank = max(cmc_fraction.size for _, cmc_fraction, _ in prepared)
    lowest = 100.0 * min(float(cmc_fraction.min()) for _, cmc_fraction, _ in prepared)
    # Tight lower bound at a multiple of 10 so that curves near 100 % are not squashed into a line.
    y_lower = max(0.0, 10.0 * math.floor((lowest - 2.0) / 10.0))

    figure = Figure(figsize=CMC_FIGSIZE_IN)
    axes = figure.add_subplot()
    for index, (label, cmc_fraction, mean_ap) in enumerate(prepared):
        ranks = np.arange(1, cmc_fraction.size + 1)
        axes.plot(
            ranks,
            100.0 * cmc_fraction,
            color=f"C{index % 10}",
            marker="o",
            linewidth=2.0,
            markersize=6,
            label=cmc_legend_label(label, float(cmc_fraction[0]), mean_ap),
        )
    axes.set_xlim(0.5, max_rank + 0.5)
    axes.set_ylim(y_lower, 101.0)  # a little above 100 so markers at 100 % are not clipped
    axes.yaxis.set_major_locator(MultipleLocator(5.0 if 100.0 - y_lower <= 40.0 else 10.0))
    if max_rank <= 20:
        axes.set_xticks(np.arange(1, max_rank + 1))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("Rank")
    axes.set_ylabel("Matching rate (%)")
    axes.set_title(title)
    axes.grid(True, linestyle="--", alpha=0.5)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return atomic_save_figure(figure, path, CMC_DPI)


def _as_numpy(values: np.ndarray | Tensor | Sequence[float]) -> np.ndarray:
    """Accept numpy arrays and torch tensors on any device."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _short_name(name: str, max_chars: int) -> str:
    """Keep long file names readable: cut the middle, keep the start and the end."""
    if len(name) <= max_chars:
        return name
    keep = max(1, (max_chars - 1) // 2)
    return f"{name[:keep]}…{name[-keep:]}"


def _framed_thumbnail(image_path: str, thumb_size: tuple[int, int], rgb: tuple[int, int, int]) -> np.ndarray:
    """Load ``image_path`` resized to ``thumb_size`` (H, W) and surround it with a thick ``rgb`` border."""
    height, width = thumb_size
    try:
        with Image.open(image_path) as image:
            resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(
            f"cannot read image {image_path!r} for the sampled-matches plot ({error}); "
            "check that the dataset folder is complete"
        ) from error
    border = _frame_border(thumb_size)
    framed = np.empty((height + 2 * border, width + 2 * border, 3), dtype=np.uint8)
    framed[...] = np.asarray(rgb, dtype=np.uint8)
    framed[border : border + height, border : border + width] = np.asarray(resized, dtype=np.uint8)
    return framed


def _frame_border(thumb_size: tuple[int, int]) -> int:
    return max(3, min(thumb_size) // 10)


def plot_sampled_matches(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    ranked_gallery: np.ndarray | Tensor,
    is_match: np.ndarray | Tensor,
    path: str | Path,
    query_labels: Sequence[str] | None = None,
    thumb_size: tuple[int, int] = (128, 64),
) -> Path:
    """Draw one row per query: the query (blue frame) then its ranked gallery images.

    Gallery images get a green frame when they share the query's identity and a red one otherwise;
    cells whose index is -1 (the gallery had fewer than max_rank usable images) stay blank. Thumbnails
    are pasted pixel for pixel (no resampling by matplotlib), so a 128 x 64 crop keeps its detail and
    the frames keep their exact colours.

    Args:
        query_paths: image file of each row's query, ``num_rows`` entries.
        gallery_paths: image file of every gallery item (indexed by ``ranked_gallery``).
        ranked_gallery: (num_rows, max_rank) gallery indices in rank order, -1 for none.
        is_match: (num_rows, max_rank) booleans, True when the gallery item matches the query identity.
        path: output PNG file; parent folders are created.
        query_labels: optional text per row (e.g. "id 12"), shown next to the query's file name.
        thumb_size: (height, width) in pixels each image is resized to before framing.

    Returns:
        The path written.
    """
    ranked = _as_numpy(ranked_gallery)
    matches = _as_numpy(is_match).astype(bool)
    if ranked.ndim != 2 or ranked.shape != matches.shape:
        raise ValueError(
            f"ranked_gallery {ranked.shape} and is_match {matches.shape} must both be (num_rows, max_rank)"
        )
    num_rows, max_rank = ranked.shape
    if num_rows == 0 or max_rank == 0:
        raise ValueError("plot_sampled_matches needs at least one query row and one rank")
    if len(query_paths) != num_rows:
        raise ValueError(f"{len(query_paths)} query paths for {num_rows} rows of ranked_gallery")
    if query_labels is not None and len(query_labels) != num_rows:
        raise ValueError(f"{len(query_labels)} query labels for {num_rows} rows of ranked_gallery")
    if len(thumb_size) != 2 or min(thumb_size) < 8:
        raise ValueError(f"thumb_size must be (height, width) of at least 8 pixels, got {thumb_size}")
    ranked = ranked.astype(np.int64)
    if ranked.min() < -1 or ranked.max() >= len(gallery_paths):
        raise ValueError(f"ranked_gallery holds indices outside -1..{len(gallery_paths) - 1}")

    # Layout in output pixels: the whole grid is one RGB canvas placed 1:1 with figimage, and the
    # labels are text in the bands around the cells. One image instead of (rows x columns) axes keeps
    # this fast (a 10 x 11 grid of axes takes seconds to build and draw).
    border = _frame_border(thumb_size)
    frame_height, frame_width = thumb_size[0] + 2 * border, thumb_size[1] + 2 * border
    column_gap = max(10, frame_width // 6)
    left_band, title_band, row_gap = 34, 22, 8
    column_pitch = frame_width + column_gap
    row_pitch = title_band + frame_height + row_gap
    num_columns = max_rank + 1
    canvas_width = left_band + num_columns * column_pitch
    # 8-pt legend characters are about 6 px wide: wrap the legend to the figure width.
    legend_lines = textwrap.wrap(FRAME_LEGEND, width=max(12, (canvas_width - 8) // 6))
    footer_band = 6 + 13 * max(2, len(legend_lines))  # two lines always fit: height independent of max_rank
    canvas_height = num_rows * row_pitch + footer_band
    canvas = np.full((canvas_height, canvas_width, 3), 255, dtype=np.uint8)

    texts: list[tuple[float, float, str, dict]] = []  # (x px, y px from top, text, matplotlib kwargs)
    name_chars = max(8, frame_height // 5)  # 7-pt characters are about 5 px wide at MATCHES_DPI
    for row in range(num_rows):
        top = row * row_pitch + title_band
        cells: list[tuple[str, tuple[int, int, int], str, str]] = [
            (query_paths[row], QUERY_FRAME_RGB, "query", "tab:blue")  # not pure blue: that marks frames only
        ]
        for rank in range(max_rank):
            gallery_index = int(ranked[row, rank])
            if gallery_index < 0:
                cells.append(("", (0, 0, 0), f"rank {rank + 1}", "gray"))
            else:
                frame_rgb = MATCH_FRAME_RGB if matches[row, rank] else MISMATCH_FRAME_RGB
                cells.append((gallery_paths[gallery_index], frame_rgb, f"rank {rank + 1}", "black"))
        for column, (image_path, frame_rgb, title, title_colour) in enumerate(cells):
            left = left_band + column * column_pitch
            if image_path:
                canvas[top : top + frame_height, left : left + frame_width] = _framed_thumbnail(
                    image_path, thumb_size, frame_rgb
                )
            else:
                texts.append(
                    (
                        left + frame_width / 2,
                        top + frame_height / 2,
                        "none",
                        {"color": "gray", "fontsize": 8, "va": "center"},
                    )
                )
            texts.append((left + frame_width / 2, top - 4, title, {"color": title_colour, "fontsize": 9}))
        caption = _short_name(os.path.basename(str(query_paths[row])), name_chars)
        if query_labels is not None:
            caption = f"{caption}\n{_short_name(str(query_labels[row]), name_chars)}"
        texts.append(
            (
                left_band - 4,
                top + frame_height / 2,
                caption,
                {"fontsize": 7, "rotation": 90, "ha": "right", "va": "center", "multialignment": "center"},
            )
        )
    texts.append(
        (
            4,
            canvas_height - footer_band / 2,
            "\n".join(legend_lines),
            {"fontsize": 8, "ha": "left", "va": "center", "color": "dimgray"},
        )
    )

    figure = Figure(figsize=(canvas_width / MATCHES_DPI, canvas_height / MATCHES_DPI), dpi=MATCHES_DPI)
    figure.figimage(canvas, xo=0, yo=0, origin="upper", resize=False)
    for x_px, y_px, text, style in texts:
        style = {"ha": "center", "va": "bottom", **style}
        figure.text(x_px / canvas_width, 1.0 - y_px / canvas_height, text, **style)
    return atomic_save_figure(figure, path, MATCHES_DPI)


# How the sampled-matches figure picks its queries (evaluate.sampled_matches).
QUERY_CHOICES = ("random", "worst")


def choose_query_rows(
    num_queries: int,
    num_rows: int,
    seed: int = 0,
    candidates: np.ndarray | None = None,
    choice: str = "random",
    query_ap: np.ndarray | None = None,
) -> np.ndarray:
    """Pick which queries the sampled-matches plot shows, reproducibly.

    Args:
        num_queries: total number of queries.
        num_rows: how many rows are wanted.
        seed: seed of ``numpy.random.default_rng``; the same inputs always give the same rows.
        candidates: query indices allowed (e.g. those with a valid match), or a boolean mask of length
            ``num_queries``; default: all queries.
        choice: "random" (a seeded draw) or "worst" (the lowest average precision first: what a
            researcher looks at first).
        query_ap: (num_queries,) average precision per query (NaN for skipped queries, which "worst" never
            picks); needed for "worst".

    Returns:
        ``min(num_rows, len(candidates))`` distinct int64 indices: sorted for "random"; for "worst" in
        increasing AP (ties by index).
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if choice not in QUERY_CHOICES:
        raise ValueError(f"choice must be one of {', '.join(QUERY_CHOICES)}, got {choice!r}")
    if candidates is None:
        pool = np.arange(num_queries, dtype=np.int64)
    else:
        candidates = np.asarray(candidates)
        if candidates.dtype == bool:
            if candidates.shape != (num_queries,):
                raise ValueError(f"boolean candidates must have length {num_queries}, got {candidates.shape}")
            pool = np.flatnonzero(candidates).astype(np.int64)
        else:
            pool = np.unique(candidates.astype(np.int64).reshape(-1))
            if pool.size and (pool[0] < 0 or pool[-1] >= num_queries):
                raise ValueError(f"candidates must be query indices in 0..{num_queries - 1}")
    if choice == "worst":
        if query_ap is None or np.shape(query_ap) != (num_queries,):
            raise ValueError(f"choice 'worst' needs query_ap with one value per query ({num_queries})")
        ap = np.asarray(query_ap, dtype=np.float64)[pool]
        pool = pool[~np.isnan(ap)]
        order = np.argsort(ap[~np.isnan(ap)], kind="stable")
        return pool[order[:num_rows]].astype(np.int64)
    count = min(num_rows, pool.size)
    chosen = np.random.default_rng(seed).choice(pool, size=count, replace=False)
    return np.sort(chosen).astype(np.int64)
