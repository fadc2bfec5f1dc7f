"""Tests of the CMC-curve and sampled-matches figures (reid_tao.evaluation.plots)."""

from __future__ import annotations

import gc
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from reid_tao.errors import DataError
from reid_tao.evaluation import plots
from reid_tao.evaluation.plots import (
    MATCH_FRAME_RGB,
    MISMATCH_FRAME_RGB,
    QUERY_FRAME_RGB,
    choose_query_rows,
    cmc_legend_label,
    plot_cmc_curves,
    plot_sampled_matches,
)

FRAME_NAMES = {QUERY_FRAME_RGB: "query", MATCH_FRAME_RGB: "match", MISMATCH_FRAME_RGB: "mismatch"}


@pytest.fixture()
def image_paths(tmp_path: Path) -> list[str]:
    """Eight small JPEGs of muted noise (no channel near 0 or 255, so no pure frame colour inside)."""
    rng = np.random.default_rng(0)
    paths = []
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(8):
        pixels = rng.integers(70, 180, size=(40 + 4 * index, 20 + 2 * index, 3), dtype=np.uint8)
        path = folder / f"{index:04d}_c{index % 3 + 1}s1_{index:06d}_00.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def load_png(path: Path) -> np.ndarray:
    """Check the file is a valid PNG and return its RGB pixels."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def colour_mask(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.asarray(rgb, dtype=np.uint8), axis=-1)


def frame_runs(pixels: np.ndarray, axis: int) -> list[tuple[int, int, set[str]]]:
    """Contiguous spans (along x for axis=1, y for axis=0) holding frame pixels, with the frame colours in each.

    A framed thumbnail has frame pixels in every pixel column/row it spans, and neighbouring cells are
    separated by white space, so each non-blank cell (or row of cells) is one run.
    """
    masks = {name: colour_mask(pixels, rgb) for rgb, name in FRAME_NAMES.items()}
    other_axis = 1 - axis
    per_line = {name: mask.any(axis=other_axis) for name, mask in masks.items()}
    any_frame = np.logical_or.reduce(list(per_line.values()))
    runs = []
    start = None
    for position, present in enumerate(list(any_frame) + [False]):
        if present and start is None:
            start = position
        elif not present and start is not None:
            names = {name for name, line in per_line.items() if line[start:position].any()}
            runs.append((start, position, names))
            start = None
    return runs


def test_frame_colours_follow_rank_order_and_blank_cells(tmp_path: Path, image_paths: list[str]) -> None:
    ranked = np.array([[3, 0, 5, -1]])
    is_match = np.array([[True, False, True, False]])
    out = plot_sampled_matches(image_paths[:1], image_paths, ranked, is_match, tmp_path / "m.png")
    pixels = load_png(out)
    runs = frame_runs(pixels, axis=1)
    # Query, then ranks 1..3; rank 4 (index -1) is blank, so it adds no run.
    assert [names for _, _, names in runs] == [{"query"}, {"match"}, {"mismatch"}, {"match"}]
    cell_width = runs[1][0] - runs[0][0]
    assert pixels.shape[1] - runs[-1][1] > 0.8 * cell_width, "the blank rank-4 cell must keep its space"
    # Thick frames: many pure pixels per cell, not just a few anti-aliased lucky ones.
    for rgb in FRAME_NAMES:
        assert colour_mask(pixels, rgb).sum() > 500


def test_rows_hold_their_own_queries_frames(tmp_path: Path, image_paths: list[str]) -> None:
    ranked = np.array([[1, 2], [4, -1], [-1, -1]])
    is_match = np.array([[False, False], [True, False], [False, False]])
    pixels = load_png(
        plot_sampled_matches(
            image_paths[:3], image_paths, ranked, is_match, tmp_path / "rows.png", query_labels=["id 1", "id 2", "id 3"]
        )
    )
    rows = frame_runs(pixels, axis=0)
    assert [names for _, _, names in rows] == [{"query", "mismatch"}, {"query", "match"}, {"query"}]
    # Within each row, the number of framed cells is the query plus the non-blank ranks.
    for (top, bottom, _), expected_cells in zip(rows, [3, 2, 1]):
        assert len(frame_runs(pixels[top:bottom], axis=1)) == expected_cells


def test_image_size_scales_with_rows_and_ranks(tmp_path: Path, image_paths: list[str]) -> None:
    def render(num_rows: int, max_rank: int) -> tuple[int, int]:
        ranked = np.arange(num_rows * max_rank).reshape(num_rows, max_rank) % len(image_paths)
        out = plot_sampled_matches(
            image_paths[:num_rows], image_paths, ranked, ranked % 2 == 0, tmp_path / f"{num_rows}x{max_rank}.png"
        )
        height, width = load_png(out).shape[:2]
        return height, width

    heights_by_rows = [render(rows, 2) for rows in (1, 2, 3)]
    sizes_by_ranks = [render(1, ranks) for ranks in (4, 5, 6)]
    # Each extra row adds the same height, each extra rank the same width, and neither changes the other.
    row_steps = np.diff([height for height, _ in heights_by_rows])
    rank_steps = np.diff([width for _, width in sizes_by_ranks])
    assert row_steps[0] == row_steps[1] and len({width for _, width in heights_by_rows}) == 1
    assert rank_steps[0] == rank_steps[1] and len({height for height, _ in sizes_by_ranks}) == 1
    # A cell holds a full-size 128 x 64 thumbnail plus its frame and label.
    assert row_steps[0] > 128 and rank_steps[0] > 64


def test_single_row_single_rank_and_tensor_inputs(tmp_path: Path, image_paths: list[str]) -> None:
    out = plot_sampled_matches(
        [image_paths[0]], image_paths, torch.tensor([[2]]), torch.tensor([[False]]), tmp_path / "deep" / "one.png"
    )
    pixels = load_png(out)
    assert [names for _, _, names in frame_runs(pixels, axis=1)] == [{"query"}, {"mismatch"}]


def test_thumb_size_changes_frame_shape(tmp_path: Path, image_paths: list[str]) -> None:
    # A wide thumbnail gives a wide frame: the query frame's bounding box follows thumb_size's aspect.
    out = plot_sampled_matches(
        [image_paths[0]], image_paths, np.array([[1]]), np.array([[True]]), tmp_path / "wide.png", thumb_size=(32, 96)
    )
    rows, columns = np.nonzero(colour_mask(load_png(out), QUERY_FRAME_RGB))
    assert (columns.max() - columns.min()) > 2 * (rows.max() - rows.min())


def test_no_figures_left_open_and_no_temporary_files(tmp_path: Path, image_paths: list[str]) -> None:
    import matplotlib.pyplot as plt

    backend_before = matplotlib.get_backend()
    gc.collect()
    figures_before = sum(type(obj) is Figure for obj in gc.get_objects())
    for repeat in range(3):
        plot_sampled_matches(
            image_paths[:2], image_paths, np.array([[0], [1]]), np.array([[True], [False]]), tmp_path / "out" / "m.png"
        )
        plot_cmc_curves({"plain": ([0.5, 0.7], 0.4)}, tmp_path / "out" / "cmc.png")
    assert plt.get_fignums() == []
    gc.collect()
    assert sum(type(obj) is Figure for obj in gc.get_objects()) == figures_before
    assert matplotlib.get_backend() == backend_before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cmc.png", "m.png"]


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cmc.png"
    plot_cmc_curves({"plain": ([0.5], 0.4)}, target)
    before = target.read_bytes()

    def broken_savefig(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError):
        plot_cmc_curves({"other": ([0.9], 0.8)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cmc.png"]


def test_output_keeps_normal_file_permissions(tmp_path: Path) -> None:
    import os

    old_umask = os.umask(0o022)
    try:
        out = plot_cmc_curves({"plain": ([0.5], 0.4)}, tmp_path / "cmc.png")
    finally:
        os.umask(old_umask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_sampled_matches_input_errors(tmp_path: Path, image_paths: list[str]) -> None:
    with pytest.raises(DataError, match="missing.jpg"):
        plot_sampled_matches(
            [str(tmp_path / "missing.jpg")], image_paths, np.array([[0]]), np.array([[True]]), tmp_path / "x.png"
        )
    with pytest.raises(ValueError, match="must both be"):
        plot_sampled_matches(image_paths[:1], image_paths, np.array([[0, 1]]), np.array([[True]]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside"):
        plot_sampled_matches(image_paths[:1], image_paths, np.array([[99]]), np.array([[True]]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="query paths"):
        plot_sampled_matches(image_paths[:2], image_paths, np.array([[0]]), np.array([[True]]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cmc_plot_is_png_with_one_coloured_line_per_curve(tmp_path: Path) -> None:
    one = load_png(plot_cmc_curves({"plain": (np.linspace(0.6, 0.95, 10), 0.5)}, tmp_path / "one.png"))
    two = load_png(
        plot_cmc_curves(
            {"plain": (np.linspace(0.6, 0.95, 10), 0.5), "re-ranked": (torch.linspace(0.7, 1.0, 10), 0.6)},
            tmp_path / "two.png",
        )
    )
    width_in, height_in = plots.CMC_FIGSIZE_IN
    assert one.shape[:2] == (round(height_in * plots.CMC_DPI), round(width_in * plots.CMC_DPI))
    first, second = (tuple(round(255 * c) for c in to_rgb(f"C{i}")) for i in (0, 1))
    assert colour_mask(one, first).sum() > 200 and colour_mask(one, second).sum() == 0
    assert colour_mask(two, first).sum() > 200 and colour_mask(two, second).sum() > 200


def test_cmc_plot_with_max_rank_one(tmp_path: Path) -> None:
    pixels = load_png(plot_cmc_curves({"plain": ([0.25], 0.1)}, tmp_path / "r1.png", title="rank 1 only"))
    marker_colour = tuple(round(255 * c) for c in to_rgb("C0"))
    assert colour_mask(pixels, marker_colour).sum() > 20


def test_cmc_legend_label_and_validation(tmp_path: Path) -> None:
    assert cmc_legend_label("plain", 0.945, 0.859) == "plain (mAP 85.9%, R1 94.5%)"
    with pytest.raises(ValueError, match="fractions"):
        plot_cmc_curves({"plain": ([85.0, 90.0], 0.8)}, tmp_path / "bad.png")  # percentages, not fractions
    with pytest.raises(ValueError, match="mAP"):
        plot_cmc_curves({"plain": ([0.85, 0.9], 80.0)}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_cmc_curves({}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plot_cmc_curves({"plain": ([], 0.5)}, tmp_path / "bad.png")


def test_choose_query_rows_is_deterministic_sorted_and_within_candidates() -> None:
    first = choose_query_rows(1000, 10, seed=3)
    assert np.array_equal(first, choose_query_rows(1000, 10, seed=3))
    assert not np.array_equal(first, choose_query_rows(1000, 10, seed=4))
    assert first.dtype == np.int64 and len(np.unique(first)) == 10 and np.all(np.diff(first) > 0)

    candidates = np.array([7, 3, 11, 3, 19])
    chosen = choose_query_rows(20, 10, seed=0, candidates=candidates)
    assert chosen.tolist() == [3, 7, 11, 19]  # fewer distinct candidates than rows: all of them
    picked = choose_query_rows(20, 2, seed=1, candidates=candidates)
    assert len(picked) == 2 and set(picked.tolist()) <= {3, 7, 11, 19}

    mask = np.zeros(20, dtype=bool)
    mask[[2, 5, 9]] = True
    assert choose_query_rows(20, 5, candidates=mask).tolist() == [2, 5, 9]
    assert choose_query_rows(20, 5, candidates=np.array([], dtype=np.int64)).size == 0
    assert choose_query_rows(20, 0).size == 0
    with pytest.raises(ValueError):
        choose_query_rows(5, 2, candidates=np.array([7]))
    with pytest.raises(ValueError):
        choose_query_rows(5, -1)


def test_choose_query_rows_worst_picks_the_lowest_ap_queries() -> None:
    query_ap = np.array([0.9, 0.2, np.nan, 0.5, 0.2, 1.0, 0.05])  # NaN: a skipped query
    assert choose_query_rows(7, 3, choice="worst", query_ap=query_ap).tolist() == [6, 1, 4]  # ties by index
    assert choose_query_rows(7, 10, choice="worst", query_ap=query_ap).tolist() == [6, 1, 4, 3, 0, 5]
    assert choose_query_rows(7, 2, choice="worst", query_ap=query_ap, candidates=np.array([0, 3, 5])).tolist() == [3, 0]
    with pytest.raises(ValueError, match="needs query_ap"):
        choose_query_rows(7, 2, choice="worst")
    with pytest.raises(ValueError, match="choice must be"):
        choose_query_rows(7, 2, choice="best")


def test_rank_metrics_carry_per_query_ap() -> None:
    from reid_tao.evaluation.metrics import evaluate_rankings

    # Query 0: match first (AP 1); query 1: match second (AP 0.5); query 2 (id 9): no match, skipped.
    distmat = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    metrics = evaluate_rankings(distmat, [1, 2, 9], [1, 2, 3], [0, 0, 0], [1, 1, 1], max_rank=3)
    assert metrics.query_ap[:2].tolist() == [1.0, 0.5] and np.isnan(metrics.query_ap[2])
    assert "query_ap" not in metrics.as_dict()
