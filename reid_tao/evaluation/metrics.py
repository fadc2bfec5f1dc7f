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

The fast path that ranks most rows without sorting them lives in :mod:`reid_tao.evaluation.fast_ranking`;
rows it cannot rank exactly (non-finite distances, ties in float64, crowded cells) are ranked here by a
stable sort of the whole row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reid_tao.errors import DataError
from reid_tao.evaluation.fast_ranking import IdIndex, rank_rows_fast, row_blocks, take_rows

IdArray = Tensor | np.ndarray | Sequence[int]

_CPU_BLOCK_ELEMENTS = 1 << 22  # distances handled per block on CPU (~30 bytes of scratch each)
_GPU_BLOCK_ELEMENTS = 1 << 25
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class RankMetrics:
    """Result of :func:`evaluate_rankings`. ``cmc``, ``mAP`` and ``mINP`` are fractions in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_query: int
    num_gallery: int
    num_valid_query: int
    # Average precision of each query (NaN for skipped ones); not part of as_dict() / metrics.json.
    query_ap: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Which queries have a true match (id > 0, seen by another camera in the gallery): the valid ones.
    valid_query: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        raise DataError(
            f"{name} must be a 1-D array of {length} ids (one per distance-matrix row/column), "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"{name} must hold integer ids, got dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def _prepare_inputs(distmat, query_pids, gallery_pids, query_camids, gallery_camids):
    """The distance matrix as a tensor and the four id arrays as int64 tensors on its device."""
    dist = _as_distmat(distmat)
    num_query, num_gallery = dist.shape
    return (
        dist,
        _as_ids(query_pids, num_query, "query_pids", dist.device),
        _as_ids(gallery_pids, num_gallery, "gallery_pids", dist.device),
        _as_ids(query_camids, num_query, "query_camids", dist.device),
        _as_ids(gallery_camids, num_gallery, "gallery_camids", dist.device),
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (and integers become float64, exact to 2**53); the rest upcast to float32."""
    if dtype == torch.float64 or not dtype.is_floating_point:
        return torch.float64
    return torch.float32


def _block_rows(num_gallery: int, device: torch.device, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1 query rows, got {block_size}")
        return int(block_size)
    budget = _GPU_BLOCK_ELEMENTS if device.type == "cuda" else _CPU_BLOCK_ELEMENTS
    return max(1, budget // max(1, num_gallery))


# ----------------------------------------------------------------------------------------------
# exact path: stable sort of whole rows (ties, non-finite distances, crowded cells)


def _rank_block_by_sort(
    block: Tensor,
    rows: Tensor,
    query_pids: Tensor,
    query_cams: Tensor,
    gallery_pids: Tensor,
    gallery_cams: Tensor,
    num_matches: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
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


@dataclass(frozen=True)
class RankSums:
    """Per-query sums behind :class:`RankMetrics`, which add up over disjoint sets of queries: the part of
    the metrics one process computes for its share of the queries (see :meth:`to_vector`).

    ap_sum, inp_sum: sums of AP and INP over the valid queries; cmc_counts: int64 (max_rank,), valid
    queries whose first true match is at rank k + 1; num_valid, num_query, num_gallery: counts.
    """

    ap_sum: float
    inp_sum: float
    cmc_counts: np.ndarray
    num_valid: int
    num_query: int
    num_gallery: int
    # AP of each of these queries (NaN for skipped ones), for the sampled-matches figure; not summed.
    query_ap: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Which of these queries have a true match (bool), for the sampled-matches figure; not summed.
    valid_query: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_vector(self, device: torch.device | str = "cpu") -> Tensor:
        """float64 [ap_sum, inp_sum, num_valid, num_query, *cmc_counts]: one tensor for one all_reduce(SUM)
        (counts stay exact in float64 up to 2**53)."""
        head = [self.ap_sum, self.inp_sum, self.num_valid, self.num_query]
        return torch.tensor(head + [int(c) for c in self.cmc_counts], dtype=torch.float64, device=device)

    @classmethod
    def from_vector(cls, vector: Tensor, num_gallery: int) -> RankSums:
        values = vector.detach().cpu().to(torch.float64).numpy()
        return cls(
            ap_sum=float(values[0]),
            inp_sum=float(values[1]),
            cmc_counts=np.rint(values[4:]).astype(np.int64),
            num_valid=int(round(values[2])),
            num_query=int(round(values[3])),
            num_gallery=num_gallery,
        )

    def __add__(self, other: RankSums) -> RankSums:
        if len(self.cmc_counts) != len(other.cmc_counts) or self.num_gallery != other.num_gallery:
            raise ValueError("RankSums of different max_rank or gallery cannot be added")
        return RankSums(
            self.ap_sum + other.ap_sum,
            self.inp_sum + other.inp_sum,
            self.cmc_counts + other.cmc_counts,
            self.num_valid + other.num_valid,
            self.num_query + other.num_query,
            self.num_gallery,
        )

    def metrics(self) -> RankMetrics:
        """The means; DataError when no query has a true match."""
        if self.num_valid == 0:
            raise DataError(
                "no query has a matching gallery image from another camera (person id > 0); check "
                "the query and gallery folders"
            )
        return RankMetrics(
            cmc=np.cumsum(self.cmc_counts) / self.num_valid,
            mAP=self.ap_sum / self.num_valid,
            mINP=self.inp_sum / self.num_valid,
            num_query=self.num_query,
            num_gallery=self.num_gallery,
            num_valid_query=self.num_valid,
            query_ap=self.query_ap,
            valid_query=self.valid_query,
        )


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
    sums = rank_sums(distmat, query_pids, gallery_pids, query_camids, gallery_camids, max_rank, block_size)
    if sums.num_valid == 0:
        query_pids_t = _as_ids(query_pids, sums.num_query, "query_pids", torch.device("cpu"))
        raise DataError(_no_valid_query_reason(query_pids_t, sums.num_query, sums.num_gallery))
    return sums.metrics()


def rank_sums(
    distmat: Tensor | np.ndarray,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
    block_size: int | None = None,
) -> RankSums:
    """The sums of :func:`evaluate_rankings` (same arguments) without taking means: no error when no query
    is valid (a process's share of the queries may have none, or be empty)."""
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    dist, query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t = _prepare_inputs(
        distmat, query_pids, gallery_pids, query_camids, gallery_camids
    )
    num_query, num_gallery = dist.shape
    device = dist.device
    dtype = _compute_dtype(dist.dtype)

    index = IdIndex.build(query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t)
    valid = index.num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        return RankSums(0.0, 0.0, np.zeros(max_rank, dtype=np.int64), 0, num_query, num_gallery)

    # Rows with inf/NaN (or sums that overflow) take the exact path; NaN is an error.
    finite = torch.isfinite(dist.sum(dim=1, dtype=dtype))
    odd_rows = torch.nonzero(valid & ~finite).squeeze(1)
    if odd_rows.numel() and bool(torch.isnan(dist.index_select(0, odd_rows)).any()):
        raise DataError(
            "distance matrix contains NaN values; check the features (a diverged model gives NaN "
            "embeddings) before evaluating"
        )

    block_rows = _block_rows(num_gallery, device, block_size)
    fast_rows = torch.nonzero(valid & finite).squeeze(1).cpu().numpy()
    results, needs_exact = rank_rows_fast(
        dist, fast_rows, index, gallery_pids_t, gallery_cams_t, query_cams_t, dtype, block_rows
    )

    exact_rows = torch.nonzero(valid & (~finite | needs_exact)).squeeze(1).cpu().numpy()
    for block_rows_np in row_blocks(exact_rows, max(1, block_rows // 2)):
        rows = torch.as_tensor(block_rows_np, device=device)
        block = take_rows(dist, block_rows_np, dtype)
        results.store(
            rows,
            *_rank_block_by_sort(
                block, rows, query_pids_t, query_cams_t, gallery_pids_t, gallery_cams_t, index.num_matches[rows]
            ),
        )

    first = results.first_rank[valid]
    cmc_counts = torch.bincount(first.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    return RankSums(
        ap_sum=float(results.ap[valid].to(torch.float64).sum()),
        inp_sum=float(results.inp[valid].to(torch.float64).sum()),
        cmc_counts=cmc_counts.cpu().numpy().astype(np.int64),
        num_valid=num_valid,
        num_query=num_query,
        num_gallery=num_gallery,
        query_ap=torch.where(valid, results.ap, float("nan")).cpu().numpy(),
        valid_query=valid.cpu().numpy(),
    )


def _no_valid_query_reason(query_pids: Tensor, num_query: int, num_gallery: int) -> str:
    if num_query == 0 or num_gallery == 0:
        return (
            f"cannot evaluate: {num_query} query and {num_gallery} gallery images; check "
            "evaluate.query_dataset / test_dataset"
        )
    if not bool((query_pids > 0).any()):
        return (
            "no query has a person id > 0 (ids -1 and 0 are junk and distractors); check the file names "
            "in evaluate.query_dataset"
        )
    return (
        "no query has a matching gallery image from another camera: every query id is missing from the "
        "gallery or seen only by the same camera (single-camera data?); check evaluate.query_dataset / "
        "test_dataset"
    )


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
        raise ValueError(f"k must be >= 1, got {k}")
    k = int(k)
    dist, query_pids_t, gallery_pids_t, query_cams_t, gallery_cams_t = _prepare_inputs(
        distmat, query_pids, gallery_pids, query_camids, gallery_camids
    )
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
        same_camera = gallery_cams_t.unsqueeze(0) == query_cams_t[begin:end].unsqueeze(1)
        valid = (gallery_pids_t >= 0).unsqueeze(0) & ~(same_id & same_camera)
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
