"""Fast path of :func:`reid_tao.evaluation.metrics.evaluate_rankings`: ranks of the true matches
without sorting rows. The entry point is :func:`rank_rows_fast`.

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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MAX_TABLE_LEVELS = 4  # rows needing more matches per cell are ranked by the exact sort
_KEY_COLUMN_BITS = 29  # float32 -> float64 leaves 29 zero mantissa bits for the gallery column
_KEY_COLUMN_MASK = (1 << _KEY_COLUMN_BITS) - 1
_LANES = 16  # spare cells that spread the items below/above all matches over separate histogram bins


# ----------------------------------------------------------------------------------------------
# row blocks (shared with the exact path)


def row_blocks(rows: np.ndarray, block_rows: int) -> Iterator[np.ndarray]:
    for begin in range(0, len(rows), block_rows):
        yield rows[begin : begin + block_rows]


def take_rows(distmat: Tensor, rows: np.ndarray, dtype: torch.dtype) -> Tensor:
    """The distance rows ``rows`` as a contiguous ``dtype`` tensor (a view when they are consecutive)."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        block = distmat[first : last + 1]
    else:
        block = distmat.index_select(0, torch.as_tensor(rows, device=distmat.device))
    return block.to(dtype).contiguous()


# ----------------------------------------------------------------------------------------------
# which gallery items share a query's id (from the ids alone, O(Q + G))


@dataclass
class IdIndex:
    """Gallery sorted by (id, camera) and, per query, the slice of it holding the query's id."""

    gallery_order: Tensor  # (G,) gallery indices sorted by (id, camera), stable
    start: Tensor  # (Q,) first position of the query's id in gallery_order
    count: Tensor  # (Q,) gallery images with the query's id (0 for queries with id <= 0)
    num_matches: Tensor  # (Q,) of those, the ones on another camera: the true matches
    max_count: int
    max_matches: int

    @classmethod
    def build(cls, query_pids: Tensor, gallery_pids: Tensor, query_cams: Tensor, gallery_cams: Tensor) -> IdIndex:
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
class RowResults:
    """Per-query outputs, filled block by block."""

    ap: Tensor  # float64
    inp: Tensor  # float64
    first_rank: Tensor  # int64, 0-based rank of the first true match

    @classmethod
    def zeros(cls, num_query: int, device: torch.device) -> RowResults:
        return cls(
            ap=torch.zeros(num_query, dtype=torch.float64, device=device),
            inp=torch.zeros(num_query, dtype=torch.float64, device=device),
            first_rank=torch.zeros(num_query, dtype=torch.int64, device=device),
        )

    def store(self, rows: Tensor, ap: Tensor, inp: Tensor, first_rank: Tensor) -> None:
        self.ap[rows] = ap
        self.inp[rows] = inp
        self.first_rank[rows] = first_rank


# ----------------------------------------------------------------------------------------------
# entry point


def rank_rows_fast(
    dist: Tensor,
    rows: np.ndarray,
    index: IdIndex,
    gallery_pids: Tensor,
    gallery_cams: Tensor,
    query_cams: Tensor,
    dtype: torch.dtype,
    block_rows: int,
) -> tuple[RowResults, Tensor]:
    """AP, INP and first-match rank of the query ``rows`` (valid queries with finite distances) of ``dist``.

    ``dtype`` is the distance dtype to compute in (float32 or float64), ``block_rows`` the query rows
    handled at once. Returns the per-query results (zero outside ``rows``) and a (Q,) bool tensor of
    the rows the fast path could not rank (an item ties with a match in float64, or more than
    ``MAX_TABLE_LEVELS`` matches share a cell): those must be ranked by the exact sort instead.
    """
    num_query, num_gallery = dist.shape
    device = dist.device
    results = RowResults.zeros(num_query, device)
    needed_levels = torch.zeros(num_query, dtype=torch.int64, device=device)
    tied = torch.zeros(num_query, dtype=torch.bool, device=device)
    if len(rows) == 0:
        return results, tied
    # Negative (or -0.0) distances need an extra bit step when building float32 keys.
    has_negative = dtype == torch.float32 and bool(torch.signbit(dist.amin()))
    ranker = _FastRanker(
        index,
        gallery_pids,
        gallery_cams,
        query_cams,
        min(block_rows, num_query),
        num_gallery,
        dtype,
        has_negative,
        device,
    )

    def fast_pass(rows_np: np.ndarray, levels: int) -> None:
        for block_rows_np in row_blocks(rows_np, block_rows):
            block_rows_t = torch.as_tensor(block_rows_np, device=device)
            ap, inp, first, row_tied, row_levels = ranker.rank_block(
                take_rows(dist, block_rows_np, dtype), block_rows_t, levels
            )
            results.store(block_rows_t, ap, inp, first)
            tied[block_rows_t] = row_tied
            needed_levels[block_rows_t] = row_levels

    fast_pass(rows, 1)
    # Rows whose matches share a cell: again with as many table levels as the worst row needs.
    crowded = torch.nonzero((needed_levels > 1) & (needed_levels <= MAX_TABLE_LEVELS)).squeeze(1)
    if crowded.numel():
        fast_pass(crowded.cpu().numpy(), int(needed_levels[crowded].max()))
    return results, tied | (needed_levels > MAX_TABLE_LEVELS)


# ----------------------------------------------------------------------------------------------
# the ranker


def _cells_per_row(num_gallery: int) -> int:
    """Cells of the fast ranker: more cells mean fewer rows whose matches share a cell (those rows are
    redone with more table levels) but bigger lookup tables per row."""
    return int(min(1 << 12, max(256, 1 << (num_gallery // 8).bit_length())))


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

    def __init__(
        self,
        index: IdIndex,
        gallery_pids: Tensor,
        gallery_cams: Tensor,
        query_cams: Tensor,
        max_block_rows: int,
        num_gallery: int,
        dtype: torch.dtype,
        has_negative: bool,
        device: torch.device,
    ) -> None:
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
        keys = self._keys[: block.shape[0]]
        torch.add(block, 0.0, out=keys)  # widen to float64; + 0.0 turns -0.0 into +0.0
        bits = keys.view(torch.int64)
        if self.has_negative:  # a larger column must make a negative key larger, i.e. smaller in magnitude
            low = self._index[: block.shape[0]]
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

    def _before_by_cells(
        self, keys: Tensor, cell: Tensor, match_key: Tensor, match_cell: Tensor, is_real: Tensor
    ) -> Tensor:
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

    def _before_by_slots(
        self,
        keys: Tensor,
        cell: Tensor,
        match_key: Tensor,
        match_cell: Tensor,
        level: Tensor,
        is_real: Tensor,
        levels: int,
    ) -> tuple[Tensor, Tensor]:
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
