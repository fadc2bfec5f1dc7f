"""Rank metrics for re-identification (CMC, mAP, mINP) and protocol-filtered top-k rankings.

Market-1501 protocol, per query:
  * gallery images with the query's id AND camera are removed (a same-camera match is trivial);
  * gallery images with a negative id (Market's junk images, id -1) are removed;
  * id 0 (distractors) stays in the gallery and is never a match;
  * a query whose id is <= 0, or that keeps no true match, is skipped (``num_valid_query`` excludes it).
AP is the mean over a query's true matches of the precision at each match's rank; CMC[k] is the
fraction of valid queries whose first match is at rank <= k + 1; INP = num_matches / rank of the last
match (Ye et al., "Deep learning for person re-identification", TPAMI 2021).
Ties in distance are broken by gallery index: the order a stable sort of each row gives.

How it avoids sorting rows (a full argsort of a Market-sized matrix takes seconds): only the ranks
of a query's true matches are needed, i.e. how many valid gallery items come before each match.
Per block of query rows, each row's matches (known from the ids, no matrix scan) are sorted, and
every gallery distance is mapped by a monotone affine map to one of K cells spanning the matches'
range, so an item can only be compared with the match(es) sharing its cell (one gather from a
per-row table). One weighted scatter over the cells then yields, per cell, the items in it and the
items before its match: about ten elementwise passes, O(G) per row, memory O(block x G), no host
sync inside the loop. float32 distances are compared as float64 keys holding (distance, column),
so ties follow the stable-sort order for free. Rows whose matches share a cell are redone with
several table levels; rows with non-finite distances, more than a few matches in one cell, or
(float64 input only) an item tying with a match are ranked by an exact stable sort instead.
All of it is vectorised torch and runs on the distmat's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from reid_tao.errors import ConfigError, DataError

IdArray = Tensor | np.ndarray | Sequence[int]

_CPU_BLOCK_ELEMENTS = 1 << 22  # distances handled per block on CPU (~30 bytes of scratch each)
_GPU_BLOCK_ELEMENTS = 1 << 25
_MAX_TABLE_LEVELS = 4  # rows needing more matches per cell are ranked by the exact sort
_INT64_MAX = torch.iinfo(torch.int64).max
_KEY_COLUMN_BITS = 29  # float32 -> float64 leaves 29 zero mantissa bits for the gallery column
_KEY_COLUMN_MASK = (1 << _KEY_COLUMN_BITS) - 1
_LANES = 16  # spare cells that spread the items below/above all matches over separate histogram bins


@dataclass(frozen=True)
class RankMetrics:
    """Result of :func:`evaluate_rankings`. ``cmc``, ``mAP`` and ``mINP`` are fractions in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_query: int
    num_gallery: int
    num_valid_query: int

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python dict. rank5/rank10 are always present: when the CMC is shorter they take its
        last value (the CMC is non-decreasing, so that is a lower bound of the true value)."""
        cmc = [float(value) for value in self.cmc]

        def at(rank: int) -> float:
            return cmc[min(rank, len(cmc)) - 1]

        return {
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "cmc": cmc,
            "rank1": at(1),
            "rank5": at(5),
            "rank10": at(10),
            "num_query": self.num_query,
            "num_gallery": self.num_gallery,
            "num_valid_query": self.num_valid_query,
        }


# ----------------------------------------------------------------------------------------------
# input handling


def _as_distmat(distmat: Tensor | np.ndarray) -> Tensor:
    if isinstance(distmat, np.ndarray):
        distmat = torch.from_numpy(np.ascontiguousarray(distmat))
    elif not isinstance(distmat, Tensor):
        distmat = torch.as_tensor(distmat)
    if distmat.dim() != 2:
        raise DataError(f"distance matrix must be 2-D (num_query, num_gallery), got shape {tuple(distmat.shape)}")
    if distmat.dtype == torch.bool or distmat.is_complex():
        raise DataError(f"distance matrix must hold real numbers, got dtype {distmat.dtype}")
    return distmat


def _as_ids(values: IdArray, length: int, name: str, device: torch.device) -> Tensor:
    tensor = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.dim() != 1 or tensor.numel() != length:
        raise DataError(f"{name} must be a 1-D array of {length} ids (one per distance-matrix row/column), "
                        f"got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"{name} must hold integer ids, got dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def _prepare_inputs(distmat, query_pids, gallery_pids, query_camids, gallery_camids):
    """The distance matrix as a tensor and the four id arrays as int64 tensors on its device."""
    dist = _as_distmat(distmat)
    num_query, num_gallery = dist.shape
    return (dist, _as_ids(query_pids, num_query, "query_pids", dist.device),
            _as_ids(gallery_pids, num_gallery, "gallery_pids", dist.device),
            _as_ids(query_camids, num_query, "query_camids", dist.device),
            _as_ids(gallery_camids, num_gallery, "gallery_camids", dist.device))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (and integers become float64, exact to 2**53); the rest upcast to float32."""
    if dtype == torch.float64 or not dtype.is_floating_point:
        return torch.float64
    return torch.float32


def _cells_per_row(num_gallery: int) -> int:
    """Cells of the fast ranker: more cells mean fewer rows whose matches share a cell (those rows are
    redone with more table levels) but bigger lookup tables per row."""
    return int(min(1 << 12, max(256, 1 << (num_gallery // 8).bit_length())))


def _block_rows(num_gallery: int, device: torch.device, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1 query rows, got {block_size}")
        return int(block_size)
    budget = _GPU_BLOCK_ELEMENTS if device.type == "cuda" else _CPU_BLOCK_ELEMENTS
    return max(1, budget // max(1, num_gallery))


def _row_blocks(rows: np.ndarray, block_rows: int) -> Iterator[np.ndarray]:
    for begin in range(0, len(rows), block_rows):
        yield rows[begin:begin + block_rows]


def _take_rows(distmat: Tensor, rows: np.ndarray, dtype: torch.dtype) -> Tensor:
    """The distance rows ``rows`` as a contiguous ``dtype`` tensor (a view when they are consecutive)."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        block = distmat[first:last + 1]
    else:
        block = distmat.index_select(0, torch.as_tensor(rows, device=distmat.device))
    return block.to(dtype).contiguous()


# ----------------------------------------------------------------------------------------------
# which gallery items share a query's id (from the ids alone, O(Q + G))


@dataclass
class _IdIndex:
    """Gallery sorted by (id, camera) and, per query, the slice of it holding the query's id."""

    gallery_order: Tensor  # (G,) gallery indices sorted by (id, camera), stable
    start: Tensor  # (Q,) first position of the query's id in gallery_order
    count: Tensor  # (Q,) gallery images with the query's id (0 for queries with id <= 0)
    num_matches: Tensor  # (Q,) of those, the ones on another camera: the true matches
    max_count: int
    max_matches: int

    @classmethod
    def build(cls, query_pids: Tensor, gallery_pids: Tensor, query_cams: Tensor, gallery_cams: Tensor) -> "_IdIndex":
        num_query = query_pids.numel()
        _, cam_code = torch.unique(torch.cat([query_cams, gallery_cams]), return_inverse=True)
        _, pid_code = torch.unique(torch.cat([query_pids, gallery_pids]), return_inverse=True)
        num_cams = int(cam_code.max()) + 1 if cam_code.numel() else 1
        keys = pid_code * num_cams + cam_code  # (id, camera) pairs as one sortable integer
        query_keys, gallery_keys = keys[:num_query], keys[num_query:]
        order = torch.argsort(gallery_keys, stable=True)
        sorted_keys = gallery_keys[order].contiguous()

        id_first = pid_code[:num_query] * num_cams
        start = torch.searchsorted(sorted_keys, id_first)
        end = torch.searchsorted(sorted_keys, id_first + num_cams)
        same_cam = torch.searchsorted(sorted_keys, query_keys, right=True) - torch.searchsorted(sorted_keys, query_keys)
        has_real_id = query_pids > 0  # -1 junk and 0 distractor queries have no true match
        count = torch.where(has_real_id, end - start, 0)
        num_matches = torch.where(has_real_id, count - same_cam, 0)
        max_count = int(count.max()) if num_query else 0
        max_matches = int(num_matches.max()) if num_query else 0
        return cls(order, start, count, num_matches, max_count, max_matches)


@dataclass
class _RowResults:
    """Per-query outputs, filled block by block."""

    ap: Tensor  # float64
    inp: Tensor  # float64
    first_rank: Tensor  # int64, 0-based rank of the first true match

    def store(self, rows: Tensor, ap: Tensor, inp: Tensor, first_rank: Tensor) -> None:
        self.ap[rows] = ap
        self.inp[rows] = inp
        self.first_rank[rows] = first_rank


# ----------------------------------------------------------------------------------------------
# fast path: ranks of the true matches without sorting rows


class _FastRanker:
    """Ranks the true matches of blocks of query rows; holds scratch buffers reused across blocks.

    ``dtype`` is the distance dtype of the blocks (float32 or float64). For float32 distances the
    comparisons use float64 *keys*: the float32 value widened to float64 (whose 29 low mantissa bits
    are then zero) with the gallery column written into those bits. Keys are all distinct and order
    exactly like (distance, column), i.e. a stable sort, so float32 ties need no special handling.
    float64 distances are compared as they are; a row where an item ties with a match is reported
    (``tied``) and must be ranked by the exact sort instead.

    Each row's matches span ``cells`` cells of a monotone affine map of the distance. Two element
    passes share that map:
      * cell pass (float32 keys, one match per cell): one scatter of the weight
        ``1 + 2**shift * (key < key of the match in the item's cell)`` per cell gives the items per
        cell and, in a match's cell, the items before it; items below/above all matches and junk
        columns land in per-column "lane" cells (via the clamp bounds) so that no single histogram
        bin takes most of the adds, which would serialise them;
      * slot pass (any dtype, several matches per cell): lookup tables give each item the slot
        ``2 * (#matches before it) + (#matches equal to it)``; a histogram of slots gives the ranks
        and exposes ties (a match's "equal" slot holding more than itself).
    """

    def __init__(self, index: _IdIndex, gallery_pids: Tensor, gallery_cams: Tensor, query_cams: Tensor,
                 max_block_rows: int, num_gallery: int, dtype: torch.dtype, has_negative: bool,
                 device: torch.device) -> None:
        self.index = index
        self.gallery_cams = gallery_cams
        self.query_cams = query_cams
        self.dtype = dtype
        self.packed = dtype == torch.float32 and num_gallery < (1 << _KEY_COLUMN_BITS)
        self.key_dtype = torch.float64 if self.packed else dtype
        self.has_negative = has_negative
        self.cells = _cells_per_row(num_gallery)
        self.num_slots = 2 * index.max_matches + 2  # the last slot collects junk columns
        self.columns = torch.arange(num_gallery, device=device).unsqueeze(0)
        junk = (gallery_pids < 0).unsqueeze(0)
        cells, lanes = self.cells, _LANES
        # Slot pass: cells 0..cells, junk columns clamped into cell cells + 1 (the junk slot).
        self.slot_cell_min = torch.where(junk, float(cells + 1), 0.0).to(dtype)
        self.slot_cell_max = torch.where(junk, float(cells + 1), float(cells)).to(dtype)
        # Cell pass: lanes below all matches (0..lanes-1), the matches' cells (lanes-1..lanes+cells+1
        # after rounding), lanes above them; junk columns go one cell higher still, so that they
        # never share a cell with a match (they must not be counted at all).
        lane = (self.columns % lanes).to(dtype)
        above = lane + float(lanes + cells + 1)
        self.lane_cell_min = torch.where(junk, above + 1, lane)
        self.lane_cell_max = torch.where(junk, above + 1, above)
        self.lane_width = cells + 2 * lanes + 2
        # Cell pass weights: item count in the low bits, items before the cell's match above them.
        self.count_shift = max(20, num_gallery.bit_length())
        shape = (max_block_rows, num_gallery)
        self._cell_f = torch.empty(shape, dtype=dtype, device=device)
        self._index = torch.empty(shape, dtype=torch.int64, device=device)
        self._keys = torch.empty(shape, dtype=torch.float64, device=device) if self.packed else None
        self._slot: Tensor | None = None  # allocated when a block first needs the slot pass
        self._scratch = torch.empty(shape, dtype=self.key_dtype, device=device)
        self._one = torch.ones((1, 1), dtype=self.key_dtype, device=device)
        self.hist_dtype = torch.float32 if num_gallery < (1 << 24) else torch.float64  # exact counts
        self._ones = torch.ones((1, 1), dtype=self.hist_dtype, device=device)

    def _pack(self, block: Tensor) -> Tensor:
        keys = self._keys[:block.shape[0]]
        torch.add(block, 0.0, out=keys)  # widen to float64; + 0.0 turns -0.0 into +0.0
        bits = keys.view(torch.int64)
        if self.has_negative:  # a larger column must make a negative key larger, i.e. smaller in magnitude
            low = self._index[:block.shape[0]]
            torch.bitwise_right_shift(bits, 63, out=low)
            low.bitwise_and_(_KEY_COLUMN_MASK).bitwise_xor_(self.columns)
            bits.bitwise_or_(low)
        else:
            bits.bitwise_or_(self.columns)
        return keys

    def rank_block(self, block: Tensor, rows: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Rank the true matches of ``rows`` (valid queries, finite distances) with ``levels`` table levels.

        Returns per row: AP, INP, first-match rank, ``tied`` (an item ties with a match: result
        unusable) and the table levels the row needs (result unusable when more than ``levels``).
        """
        index, device = self.index, block.device
        num_rows, num_gallery = block.shape
        max_count, max_matches = index.max_count, index.max_matches
        inf = float("inf")
        use_lanes = self.packed and levels == 1
        offset = _LANES if use_lanes else 0
        keys = self._pack(block) if self.packed else block

        # Candidates: the gallery images with the query's id, split into matches and same-camera ones.
        offsets = torch.arange(max_count, device=device)
        positions = (index.start[rows].unsqueeze(1) + offsets).clamp_(max=num_gallery - 1)
        in_id = offsets < index.count[rows].unsqueeze(1)
        gallery_index = index.gallery_order[positions]
        other_cam = self.gallery_cams[gallery_index] != self.query_cams[rows].unsqueeze(1)
        cand_key = keys.gather(1, gallery_index)
        match_key, order = torch.where(in_id & other_cam, cand_key, inf).sort(dim=1)
        match_key, order = match_key[:, :max_matches].contiguous(), order[:, :max_matches]
        same_cam_key = torch.where(in_id & ~other_cam, cand_key, inf).sort(dim=1).values

        num_matches = index.num_matches[rows]
        is_real = torch.arange(max_matches, device=device) < num_matches.unsqueeze(1)
        match_dist = block.gather(1, gallery_index.gather(1, order)) if self.packed else match_key
        match_dist = torch.where(is_real, match_dist, inf)
        low = match_dist[:, :1]
        high = match_dist.gather(1, (num_matches - 1).clamp(min=0).unsqueeze(1))
        span = high - low
        usable_span = (span > 0) & torch.isfinite(span)
        scale = torch.where(usable_span, self.cells / span, torch.ones_like(span)).clamp_(max=1e30)
        base = low - offset / scale  # the first match maps to cell ~offset

        # Cells of the matches, with exactly the element pass's operations so both agree bit for bit.
        match_cell = ((match_dist - base) * scale).clamp_(0, self.cells + 2 * offset).to(torch.int64)
        level = self._level_in_cell(match_cell)
        row_levels = torch.where(is_real, level, -1).amax(dim=1) + 1
        if use_lanes:
            # Lanes hold items below/above all matches, so the matches must sit on or between the lanes.
            misplaced = (match_cell[:, 0] < offset - 1) | (is_real & (match_cell > offset + self.cells + 1)).any(dim=1)
            row_levels = torch.where(misplaced, row_levels.clamp(min=2), row_levels)  # redo them with slots

        cell_f = self._cell_f[:num_rows]
        cell = self._index[:num_rows]
        torch.sub(block, base, out=cell_f)
        cell_f.mul_(scale)
        if use_lanes:
            torch.clamp(cell_f, self.lane_cell_min, self.lane_cell_max, out=cell_f)
            cell.copy_(cell_f)
            before = self._before_by_cells(keys, cell, match_key, match_cell, is_real)
        else:
            torch.clamp(cell_f, self.slot_cell_min, self.slot_cell_max, out=cell_f)
            cell.copy_(cell_f)
            before, equal = self._before_by_slots(keys, cell, match_key, match_cell, level, is_real, levels)
            tied = (is_real & (equal != 1)).any(dim=1)

        # Rank of match l among the valid items: minus the same-camera images before it.
        rank = before - torch.searchsorted(same_cam_key, match_key)
        ap, inp, first = _ap_inp_first(rank, is_real, num_matches)
        if use_lanes:
            tied = torch.zeros_like(is_real[:, 0])  # keys are distinct: no ties
        return ap, inp, first, tied, row_levels

    def _before_by_cells(self, keys: Tensor, cell: Tensor, match_key: Tensor, match_cell: Tensor,
                         is_real: Tensor) -> Tensor:
        """Items before each match (one match per cell), by one weighted scatter over cells."""
        num_rows, width = keys.shape[0], self.lane_width
        dump = torch.full_like(match_cell, width)  # one extra column absorbs the padding matches
        table = torch.full((num_rows, width + 1), float("inf"), dtype=self.key_dtype, device=keys.device)
        table.scatter_(1, torch.where(is_real, match_cell, dump), match_key)
        weight = self._scratch[:num_rows]
        torch.gather(table, 1, cell, out=weight)
        torch.lt(keys, weight, out=weight)
        torch.add(self._one, weight, alpha=float(1 << self.count_shift), out=weight)
        hist = torch.zeros((num_rows, width), dtype=self.key_dtype, device=keys.device)
        hist.scatter_add_(1, cell, weight)
        packed_counts = hist.to(torch.int64)
        items = packed_counts & ((1 << self.count_shift) - 1)
        before_in_cell = packed_counts >> self.count_shift
        items_below = items.cumsum(dim=1) - items
        at = match_cell.clamp(max=width - 1)
        return items_below.gather(1, at) + before_in_cell.gather(1, at)

    def _before_by_slots(self, keys: Tensor, cell: Tensor, match_key: Tensor, match_cell: Tensor, level: Tensor,
                         is_real: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        """Items before each match and items equal to it, via slot tables with ``levels`` levels."""
        num_rows, num_gallery = keys.shape
        device, width, inf = keys.device, self.cells + 2, float("inf")
        dump = torch.full_like(match_cell, width - 1)
        counts = torch.zeros((num_rows, width), dtype=self.key_dtype, device=device)
        counts.scatter_add_(1, torch.where(is_real, match_cell, dump), is_real.to(self.key_dtype))
        # base[c] = 2 * (matches in cells < c) + levels; table_l[c] = key of the l-th match in cell c.
        base = (counts.cumsum(dim=1) - counts).mul_(2).add_(levels)
        base[:, width - 1] = self.num_slots - 1 + levels  # junk cell: each compare below adds -1
        if self._slot is None:
            self._slot = torch.empty_like(self._scratch)
        slot = self._slot[:num_rows]
        scratch = self._scratch[:num_rows]
        torch.gather(base, 1, cell, out=slot)
        for table_level in range(levels):
            table = torch.full((num_rows, width), inf, dtype=self.key_dtype, device=device)
            table.scatter_(1, torch.where(is_real & (level == table_level), match_cell, dump), match_key)
            table[:, width - 1] = inf
            torch.gather(table, 1, cell, out=scratch)
            torch.sub(keys, scratch, out=scratch)
            slot.add_(scratch.sign_())
        cell.copy_(slot)
        hist = torch.zeros((num_rows, self.num_slots), dtype=self.hist_dtype, device=device)
        hist.scatter_add_(1, cell, self._ones.expand(num_rows, num_gallery))
        even = torch.arange(0, 2 * match_key.shape[1], 2, device=device)
        return hist.cumsum(dim=1)[:, even].to(torch.int64), hist[:, even + 1]

    @staticmethod
    def _level_in_cell(sorted_cells: Tensor) -> Tensor:
        """Position of each (sorted) match among the matches of its cell."""
        position = torch.arange(sorted_cells.shape[1], device=sorted_cells.device).expand_as(sorted_cells)
        run_start = torch.ones_like(sorted_cells, dtype=torch.bool)
        run_start[:, 1:] = sorted_cells[:, 1:] != sorted_cells[:, :-1]
        first_of_run = torch.where(run_start, position, 0).cummax(dim=1).values
        return position - first_of_run


def _ap_inp_first(rank: Tensor, is_real: Tensor, num_matches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """AP, INP and first rank from the 0-based ranks of each row's matches (sorted, padded)."""
    hits = torch.arange(1, rank.shape[1] + 1, device=rank.device, dtype=torch.float64)
    precision = hits / (rank.to(torch.float64) + 1.0)
    matches = num_matches.to(torch.float64)
    ap = torch.where(is_real, precision, 0.0).sum(dim=1) / matches
    last = rank.gather(1, (num_matches - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    inp = matches / (last.to(torch.float64) + 1.0)
    return ap, inp, rank[:, 0]


# ----------------------------------------------------------------------------------------------
# exact path: stable sort of whole rows (ties, non-finite distances, crowded cells)


def _rank_block_by_sort(block: Tensor, rows: Tensor, query_pids: Tensor, query_cams: Tensor,
                        gallery_pids: Tensor, gallery_cams: Tensor, num_matches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    order = torch.sort(block, dim=1, stable=True).indices
    pids = gallery_pids[order]
    same_id = pids == query_pids[rows].unsqueeze(1)
    valid = (pids >= 0) & ~(same_id & (gallery_cams[order] == query_cams[rows].unsqueeze(1)))
    del order
    is_match = valid & same_id
    valid_rank = valid.cumsum(dim=1)  # 1-based rank among valid items
    match_count = is_match.cumsum(dim=1)
    precision = match_count.to(torch.float64) / valid_rank.clamp(min=1).to(torch.float64)
    matches = num_matches.to(torch.float64)
    ap = torch.where(is_match, precision, 0.0).sum(dim=1) / matches
    first = torch.where(is_match, valid_rank, _INT64_MAX).amin(dim=1) - 1
    last = torch.where(is_match, valid_rank, 0).amax(dim=1)
    inp = matches / last.to(torch.float64)
    return ap, inp, first


# ----------------------------------------------------------------------------------------------
# public API


def evaluate_rankings(
    distmat: Tensor | np.ndarray,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
    block_size: int | None = None,
) -> RankMetrics:
    """CMC, mAP and mINP of a (Q, G) distance matrix (smaller = more similar) under the Market protocol.

    ``distmat`` may be a torch tensor on any device or a numpy array; ids and camera ids are 1-D
    integer arrays (converted to the distmat's device). ``cmc`` has ``max_rank`` entries even when
    that exceeds the gallery size (it is then 1.0 from the last reachable rank on). ``block_size`` is
    the number of query rows handled at once (default: about 4M distances on CPU, 32M on GPU); memory
    is O(block_size x G). Ties in distance are broken by gallery index (stable-sort order).
    Raises DataError when no query has a true match in the gallery.
    """
    if int(max_rank) < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    dist, query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t = _prepare_inputs(
        distmat, query_pids, gallery_pids, query_camids, gallery_camids)
    num_query, num_gallery = dist.shape
    device = dist.device
    dtype = _compute_dtype(dist.dtype)

    index = _IdIndex.build(query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t)
    valid = index.num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise DataError(_no_valid_query_reason(query_pids_t, num_query, num_gallery))

    # Rows with inf/NaN (or sums that overflow) take the exact path; NaN is an error.
    finite = torch.isfinite(dist.sum(dim=1, dtype=dtype))
    odd_rows = torch.nonzero(valid & ~finite).squeeze(1)
    if odd_rows.numel() and bool(torch.isnan(dist.index_select(0, odd_rows)).any()):
        raise DataError("distance matrix contains NaN values; check the features (a diverged model gives NaN "
                        "embeddings) before evaluating")

    block_rows = _block_rows(num_gallery, device, block_size)
    results = _RowResults(
        ap=torch.zeros(num_query, dtype=torch.float64, device=device),
        inp=torch.zeros(num_query, dtype=torch.float64, device=device),
        first_rank=torch.zeros(num_query, dtype=torch.int64, device=device),
    )
    needed_levels = torch.zeros(num_query, dtype=torch.int64, device=device)
    tied = torch.zeros(num_query, dtype=torch.bool, device=device)
    # Negative (or -0.0) distances need an extra bit step when building float32 keys.
    has_negative = dtype == torch.float32 and bool(torch.signbit(dist.amin()))
    ranker = _FastRanker(index, gallery_pids_t, gallery_cams_t, query_cams_t, min(block_rows, num_query),
                         num_gallery, dtype, has_negative, device)

    def fast_pass(rows_np: np.ndarray, levels: int) -> None:
        for block_rows_np in _row_blocks(rows_np, block_rows):
            rows = torch.as_tensor(block_rows_np, device=device)
            ap, inp, first, row_tied, row_levels = ranker.rank_block(_take_rows(dist, block_rows_np, dtype), rows, levels)
            results.store(rows, ap, inp, first)
            tied[rows] = row_tied
            needed_levels[rows] = row_levels

    fast_rows = torch.nonzero(valid & finite).squeeze(1).cpu().numpy()
    if len(fast_rows):
        fast_pass(fast_rows, 1)
        # Rows whose matches share a cell: again with as many table levels as the worst row needs.
        crowded = torch.nonzero((needed_levels > 1) & (needed_levels <= _MAX_TABLE_LEVELS)).squeeze(1)
        if crowded.numel():
            fast_pass(crowded.cpu().numpy(), int(needed_levels[crowded].max()))

    exact = (valid & ~finite) | (valid & (tied | (needed_levels > _MAX_TABLE_LEVELS)))
    exact_rows = torch.nonzero(exact).squeeze(1).cpu().numpy()
    if len(exact_rows):
        for block_rows_np in _row_blocks(exact_rows, max(1, block_rows // 2)):
            rows = torch.as_tensor(block_rows_np, device=device)
            block = _take_rows(dist, block_rows_np, dtype)
            results.store(rows, *_rank_block_by_sort(block, rows, query_pids_t, query_cams_t, gallery_pids_t,
                                                     gallery_cams_t, index.num_matches[rows]))

    first = results.first_rank[valid]
    cmc_counts = torch.bincount(first.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = (cmc_counts.cumsum(0).to(torch.float64) / num_valid).cpu().numpy()
    return RankMetrics(
        cmc=cmc,
        mAP=float(results.ap[valid].mean()),
        mINP=float(results.inp[valid].mean()),
        num_query=num_query,
        num_gallery=num_gallery,
        num_valid_query=num_valid,
    )


def _no_valid_query_reason(query_pids: Tensor, num_query: int, num_gallery: int) -> str:
    if num_query == 0 or num_gallery == 0:
        return (f"cannot evaluate: {num_query} query and {num_gallery} gallery images; check "
                "evaluate.query_dataset / test_dataset")
    if not bool((query_pids > 0).any()):
        return ("no query has a person id > 0 (ids -1 and 0 are junk and distractors); check the file names "
                "in evaluate.query_dataset")
    return ("no query has a matching gallery image from another camera: every query id is missing from the "
            "gallery or seen only by the same camera (single-camera data?); check evaluate.query_dataset / "
            "test_dataset")


def _sortable_keys(block: Tensor) -> Tensor:
    """int64 keys ordered like (distance, column) for float32 distances: an exact stable order."""
    bits = (block + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0, which compares equal
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their bit order
    columns = torch.arange(block.shape[1], device=block.device, dtype=torch.int64)
    return (bits.to(torch.int64) << 32) | columns


def top_ranked(
    distmat: Tensor | np.ndarray,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    k: int,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The k nearest gallery images per query after the protocol's filtering, in ranking order.

    Same-id-same-camera and junk (negative id) gallery images are left out, exactly as in
    :func:`evaluate_rankings`; ties go to the lower gallery index. Returns ``indices`` (Q, k) int64
    and ``is_match`` (Q, k) bool on the distmat's device; rows with fewer than k valid gallery images
    are padded with -1 / False.
    """
    if int(k) < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    k = int(k)
    dist, query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t = _prepare_inputs(
        distmat, query_pids, gallery_pids, query_camids, gallery_camids)
    num_query, num_gallery = dist.shape
    device = dist.device
    dtype = _compute_dtype(dist.dtype)

    indices = torch.full((num_query, k), -1, dtype=torch.int64, device=device)
    is_match = torch.zeros((num_query, k), dtype=torch.bool, device=device)
    kept = min(k, num_gallery)
    if num_query == 0 or kept == 0:
        return indices, is_match
    block_rows = max(1, _block_rows(num_gallery, device, block_size) // 2)
    for begin in range(0, num_query, block_rows):
        end = min(begin + block_rows, num_query)
        block = dist[begin:end].to(dtype)
        if bool(torch.isnan(block).any()):
            raise DataError("distance matrix contains NaN values; check the features before ranking")
        qp = query_pids_t[begin:end].unsqueeze(1)
        same_id = gallery_pids_t.unsqueeze(0) == qp
        valid = (gallery_pids_t >= 0).unsqueeze(0) & ~(same_id & (gallery_cams_t.unsqueeze(0) == query_cams_t[begin:end].unsqueeze(1)))
        if dtype == torch.float32:
            keys = _sortable_keys(block.contiguous()).masked_fill_(~valid, _INT64_MAX)
            top_keys = torch.topk(keys, kept, dim=1, largest=False, sorted=True).values
            ok = top_keys != _INT64_MAX
            top = torch.where(ok, top_keys & 0xFFFFFFFF, 0)
        else:  # float64: NaN marks the filtered items; a stable sort puts NaN last
            top = torch.sort(block.masked_fill(~valid, float("nan")), dim=1, stable=True).indices[:, :kept]
            ok = valid.gather(1, top)
        hit = ok & (gallery_pids_t[top] == qp) & (qp > 0)
        indices[begin:end, :kept] = torch.where(ok, top, -1)
        is_match[begin:end, :kept] = hit
    return indices, is_match
