"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with sparse, blocked state so that it scales.

The result equals the authors' dense algorithm, but nothing of size (Q+G)^2 is ever stored and no
Python loop runs per probe:

1. squared Euclidean distances over all N = Q+G probes are computed tile by tile (symmetric tiles,
   each computed once); only each row's maximum, its running top-k neighbours and the
   query x gallery part (the output buffer) are kept;
2. reciprocity tests and the k-reciprocal expansion run on the (N, k1+1) neighbour table;
3. the weight matrix V and its query expansion are padded sparse rows (N, width) with
   width ~ a few dozen;
4. the Jaccard distance is accumulated per block of queries by scatter-adding min(V[q,c], V[g,c])
   over the gallery items g listed in the inverted index (posting list) of each non-zero column c.

:func:`jaccard_distance` is the Jaccard part among one set of features (for clustering);
:func:`jaccard_graph` keeps only its pairs within a radius, as a sparse matrix, so that nothing of size N^2 is
stored at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import Tensor

from reid_tao.errors import DataError

# Bytes of temporaries one block may use; tiles, query blocks and pair batches are sized from it.
_CPU_BLOCK_BYTES = 256 * 2**20
_GPU_BLOCK_BYTES = 2 * 2**30
# Rough bytes one (query, gallery) pair costs in the Jaccard scatter (indices, gathers, products).
_BYTES_PER_PAIR = 64


def re_ranking(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int | None = None,
) -> Tensor:
    """Re-rank query x gallery distances with k-reciprocal encoding (Zhong et al., CVPR 2017).

    The original distance is the squared Euclidean distance between the features as given (pass
    L2-normalised features for the usual setting) among all N = Q+G probes, each row divided by its
    maximum. Returns ``(1 - lambda_value) * jaccard + lambda_value * original`` for query rows and
    gallery columns, as float32 on the inputs' device. Computation runs on that device, in float64
    when an input is float64 and in float32 otherwise.

    Args:
        query_features: (Q, D) query features.
        gallery_features: (G, D) gallery features, same device.
        k1: size of the k-reciprocal neighbourhood (forward top k1+1, self included).
        k2: number of neighbours averaged by local query expansion (1 disables it).
        lambda_value: weight of the original distance in the final distance, in [0, 1].
        block_size: rows per distance tile (tiles are block x block) and queries per Jaccard block.
            ``None`` sizes blocks from N, G and a temporaries budget (256 MiB on CPU; on CUDA
            2 GiB, or 1/8 of the free GPU memory when that is less).

    Memory in bytes, with s = 4 (8 for float64 inputs), W the padded width of the sparse rows
    (about 50 for the expanded reciprocal sets and 130 after query expansion on Market-1501) and
    a budget of 256 MiB on CPU, 2 GiB on GPU for block temporaries:
        4*Q*G                          output (the only dense state: its query x gallery distances)
      + s*N*D                          concatenated features
      + N*max(k1+1, k2)*(8+s)          neighbour table
      + 3*N*W*(8+s)                    sparse V, its query expansion, the inverted index
      + about one budget               block temporaries: two T x T distance tiles with
                                       T = sqrt(budget/(3s)) (or block_size), a (R, G) Jaccard
                                       accumulator with R = budget/(2sG), budget/64 Jaccard pairs.
    Market-1501 on CPU (Q=3,368, G=15,913, D=2048): 0.21 + 0.16 + 0.01 + 0.09 + 0.27 GB
    (the measured peak: docs/benchmarks.md#figures-from-earlier-sessions).
    MSMT17 on GPU (Q=11,659, G=82,161): 3.8 + 0.8 + 0.02 + 0.5 + 2.1 GB, far below 80 GB.
    """
    _check_arguments(query_features, gallery_features, k1, k2, lambda_value, block_size)
    # Neighbour order needs full float32 products: TF32 (set for training speed) would blur it.
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad():  # features fresh from a model may still require grad
            return _re_ranking(query_features, gallery_features, k1, k2, float(lambda_value), block_size)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)


def _re_ranking(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int,
    k2: int,
    lambda_value: float,
    block_size: int | None,
) -> Tensor:
    """re_ranking after argument checks, under full-precision float32 matrix products."""
    device = query_features.device
    compute_dtype = torch.float64 if torch.float64 in (query_features.dtype, gallery_features.dtype) else torch.float32
    num_query, num_gallery = query_features.shape[0], gallery_features.shape[0]
    output = torch.empty((num_query, num_gallery), dtype=torch.float32, device=device)
    if num_query == 0 or num_gallery == 0:
        return output

    features = torch.cat([query_features, gallery_features]).to(compute_dtype)
    if not bool(torch.isfinite(features).all()):
        raise DataError(
            "re-ranking got NaN or infinite features; the model produced invalid embeddings "
            "(diverged training or a broken checkpoint): check the checkpoint and retrain if needed."
        )
    num_all = features.shape[0]
    element_size = features.element_size()
    budget = _block_budget(device)
    tile = block_size or max(256, math.isqrt(budget // (3 * element_size)))
    query_rows = block_size or max(1, budget // (2 * element_size * num_gallery))
    index_elements = max(1, budget // 32)  # int64 elements per index temporary (a few live at once)

    k_forward = min(k1 + 1, num_all)
    k_half = min(int(round(k1 / 2)) + 1, num_all)  # round half to even, as numpy.around
    k_expand = min(k2, num_all)

    squared_norms = torch.einsum("nd,nd->n", features, features)  # no (N, D) temporary
    neighbours, row_max = _nearest_neighbours(features, squared_norms, max(k_forward, k_expand), tile, output)
    # A row of identical features has maximum 0: keep its distances at 0 instead of NaN.
    row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))
    output.div_(row_max[:num_query, None])

    forward = neighbours[:, :k_forward]
    half = neighbours[:, :k_half]
    members = _expanded_reciprocal_sets(
        forward,
        _reciprocal_mask(forward, index_elements),
        half,
        _reciprocal_mask(half, index_elements),
        index_elements,
    )
    weights = _gaussian_weights(features, squared_norms, row_max, members, budget)
    if k_expand > 1:
        members, weights = _query_expansion(members, weights, neighbours[:, :k_expand], index_elements)
    del neighbours, forward, half, features

    pair_budget = max(1, budget // _BYTES_PER_PAIR)
    _blend_jaccard(output, members, weights, num_query, lambda_value, query_rows, pair_budget)
    return output


def jaccard_distance(features: Tensor, k1: int = 20, k2: int = 6, block_size: int | None = None) -> Tensor:
    """(N, N) k-reciprocal Jaccard distances among one set of features (each probe against all, itself included).

    The Jaccard part of :func:`re_ranking` (``lambda_value`` 0) with the set as both query and gallery, built
    from the same sparse neighbour sets, so nothing but the (N, N) float32 output is dense. Used to cluster
    unlabeled images (pseudo labels for domain adaptation, as in Zhong et al. 2017 and Cluster Contrast).
    """
    _check_arguments(features, features, k1, k2, 0.0, block_size)
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad():
            return _jaccard_distance(features, k1, k2, block_size)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)


def _jaccard_distance(features: Tensor, k1: int, k2: int, block_size: int | None) -> Tensor:
    features = features.to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    num_all = features.shape[0]
    # zeros, not empty: with lambda 0 the blend multiplies the output by 0 (NaN garbage would stay NaN)
    output = torch.zeros((num_all, num_all), dtype=torch.float32, device=features.device)
    if num_all == 0:
        return output
    members, weights, budget = _jaccard_rows(features, k1, k2, block_size)
    query_rows = block_size or max(1, budget // (2 * features.element_size() * num_all))
    _blend_jaccard(
        output, members, weights, num_all, 0.0, query_rows, max(1, budget // _BYTES_PER_PAIR), gallery_start=0
    )
    return output


def jaccard_graph(
    features: Tensor,
    k1: int = 20,
    k2: int = 6,
    max_distance: float = 1.0,
    nearest_pairs: int | None = None,
    block_size: int | None = None,
    cameras: Tensor | None = None,
    camera_penalty: float = 0.0,
) -> csr_matrix:
    """Sparse (N, N) form of :func:`jaccard_distance`: the same float32 distances, stored only where they are at
    most ``max_distance``.

    The Jaccard distance of probes i and j is 1 - s / (2 - s) with s = sum_c min(V[i, c], V[j, c]), so it is
    exactly 1 unless the sparse rows of V of i and j share a column. Only such pairs are looked at (through
    the inverted index, as in the dense form; each pair once, as the distance is symmetric), and those with
    a distance <= ``max_distance`` are stored: every pair that is not stored is farther than
    ``max_distance`` (or shares no column: distance 1). Each row is sorted by increasing distance, a probe's
    distance to itself (0 up to rounding) included, and a distance of 0 is an explicit entry: the layout
    scikit-learn's radius neighbours and DBSCAN take as a precomputed sparse graph, where a missing entry
    means "not a neighbour".

    ``nearest_pairs`` (optional) lowers ``max_distance`` to the distance of the ``nearest_pairs``-th closest
    pair of two probes (i < j; equal distances at that cut all kept): what a radius chosen from the smallest
    distances (``clustering.auto_eps``) needs, in memory bounded by it instead of by every pair sharing a
    column.

    ``cameras`` (N camera numbers) and ``camera_penalty`` > 0: the squared distance of two images from one
    camera is taken ``camera_penalty`` larger (the neighbour sets, their weights and the query expansion), so
    a person's views on other cameras enter the k-reciprocal sets that the views on its own camera, alike in
    light and background, would otherwise fill (the aim of CA-Jaccard, Chen et al. 2023).

    Returns a symmetric ``scipy.sparse.csr_matrix`` of float32 on the CPU, whatever the features' device.
    Memory: 8 bytes per stored entry (a clustering radius keeps a few dozen per probe; ``max_distance`` 1
    keeps every pair sharing a column: thousands per probe with k1 30, k2 6) plus what
    :func:`jaccard_distance` needs besides its dense output. Time: that of :func:`jaccard_distance`, with
    half its pair terms.
    """
    _check_arguments(features, features, k1, k2, 0.0, block_size)
    if not 0.0 <= float(max_distance):
        raise ValueError(f"max_distance must be >= 0, got {max_distance!r}")
    if nearest_pairs is not None and (
        isinstance(nearest_pairs, bool) or not isinstance(nearest_pairs, int) or nearest_pairs < 1
    ):
        raise ValueError(f"nearest_pairs must be a positive integer or None, got {nearest_pairs!r}")
    same_camera = _same_camera_penalty(features, cameras, camera_penalty)
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad():
            return _jaccard_graph(features, k1, k2, float(max_distance), nearest_pairs, block_size, same_camera)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)


def _jaccard_graph(
    features: Tensor,
    k1: int,
    k2: int,
    max_distance: float,
    nearest_pairs: int | None,
    block_size: int | None,
    same_camera: tuple[Tensor, float] | None = None,
) -> csr_matrix:
    features = features.to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    num_all = features.shape[0]
    if num_all == 0:
        return csr_matrix((0, 0), dtype=np.float32)
    members, weights, budget = _jaccard_rows(features, k1, k2, block_size, same_camera)
    device = members.device
    # The non-zero entries (i, c) of V, row by row; entry e pairs with the postings of column c from row i on,
    # which start at the entry's own posting (rows ascend within a column): each pair (i, j >= i) once.
    used = members < num_all
    row_offset = torch.zeros(num_all + 1, dtype=torch.long, device=device)
    torch.cumsum(used.sum(1), 0, out=row_offset[1:])
    entry_column, entry_weight = members[used], weights[used]
    del members, weights, used
    # Block accumulator: (rows, N - start) float64, a quarter of the temporaries budget.
    query_rows = block_size or max(1, budget // (32 * num_all))
    # int32 indices where they fit: the pair expansion below moves half the bytes and runs twice as fast
    index_dtype = torch.int32 if max(entry_column.shape[0], query_rows * num_all) < 2**31 else torch.long
    entry_row = torch.repeat_interleave(torch.arange(num_all, device=device, dtype=index_dtype), row_offset.diff())
    posting_row, posting_weight, posting_start, posting_length, entry_first = _inverted_index(
        entry_column, entry_row, entry_weight, num_all
    )
    entry_length = torch.index_select(posting_start + posting_length, 0, entry_column).sub_(entry_first)
    del entry_column, posting_start, posting_length
    entry_first, entry_length = entry_first.to(index_dtype), entry_length.to(index_dtype)
    pairs_before = torch.zeros(entry_length.shape[0] + 1, dtype=torch.long, device=device)
    torch.cumsum(entry_length, 0, dtype=torch.long, out=pairs_before[1:])
    pairs_per_row = pairs_before[row_offset[1:]] - pairs_before[row_offset[:-1]]
    del pairs_before
    accumulator = torch.zeros(query_rows * num_all, dtype=torch.float64, device=device)
    pair_budget = max(1, budget // _BYTES_PER_PAIR)
    kept_pairs = _KeptPairs(max_distance, nearest_pairs)
    row_offset = row_offset.tolist()
    for start, stop, total_pairs in _query_blocks(pairs_per_row, query_rows, pair_budget):
        width = num_all - start  # columns start..N-1: the pairs (i, j >= i) of rows start..stop-1
        entries = slice(row_offset[start], row_offset[stop])
        base = (entry_row[entries] - start).mul_(width).sub_(start)
        target, shared = _expand_pairs(
            base,
            entry_weight[entries],
            entry_first[entries],
            entry_length[entries],
            posting_row,
            posting_weight,
            total_pairs,
        )
        block = accumulator[: (stop - start) * width]
        block.index_add_(0, target, shared.double())
        del target, shared
        kept = torch.nonzero(block > kept_pairs.overlap_floor()).squeeze(1)
        overlap = block[kept]
        block.zero_()
        # the float32 rounding of the dense form: 0 * 0 - ratio + 1 there equals 1 - ratio here
        distance = (1.0 - overlap.div_(2.0 - overlap).float()).clamp_(min=0.0)
        close = distance <= kept_pairs.cut
        kept, distance = kept[close], distance[close]
        kept_pairs.add(
            (kept // width + start).to(torch.int32).cpu().numpy(),
            (kept % width + start).to(torch.int32).cpu().numpy(),
            distance.cpu().numpy(),
        )
    return _symmetric_graph(*kept_pairs.result(), num_all)


class _KeptPairs:
    """The pairs (i <= j) a Jaccard graph keeps: distance <= ``cut``, where ``cut`` starts at ``max_distance``
    and, with ``nearest_pairs``, falls to the distance of the nearest_pairs-th closest pair (i < j) seen so
    far (pruned whenever twice that many are held, so memory stays bounded by it)."""

    def __init__(self, max_distance: float, nearest_pairs: int | None) -> None:
        self.cut, self.nearest_pairs = max_distance, nearest_pairs
        self.rows: list[np.ndarray] = []
        self.columns: list[np.ndarray] = []
        self.distances: list[np.ndarray] = []
        self.held = 0  # pairs i < j held

    def overlap_floor(self) -> float:
        """Overlaps at most this are farther than ``cut`` (s >= 2(1-cut)/(2-cut) <=> distance <= cut), with a
        margin far above the rounding: the exact test is on the distance."""
        threshold = 2.0 * (1.0 - self.cut) / (2.0 - self.cut) if self.cut < 1.0 else 0.0
        return max(threshold - 1e-6, 0.0)

    def add(self, rows: np.ndarray, columns: np.ndarray, distances: np.ndarray) -> None:
        self.rows.append(rows)
        self.columns.append(columns)
        self.distances.append(distances)
        self.held += int((rows != columns).sum())
        if self.nearest_pairs is not None and self.held > 2 * self.nearest_pairs:
            self._prune()

    def _prune(self) -> None:
        rows, columns, distances = (np.concatenate(part) for part in (self.rows, self.columns, self.distances))
        pair = rows != columns
        if pair.sum() > self.nearest_pairs:
            self.cut = min(
                self.cut, float(np.partition(distances[pair], self.nearest_pairs - 1)[self.nearest_pairs - 1])
            )
            kept = ~pair | (distances <= self.cut)
            rows, columns, distances, pair = rows[kept], columns[kept], distances[kept], pair[kept]
        self.rows, self.columns, self.distances, self.held = [rows], [columns], [distances], int(pair.sum())

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.nearest_pairs is not None:
            self._prune()
        return tuple(np.concatenate(part) for part in (self.rows, self.columns, self.distances))


def _symmetric_graph(row: np.ndarray, column: np.ndarray, distance: np.ndarray, size: int) -> csr_matrix:
    """CSR matrix of the upper-triangle entries (row <= column) and their mirror images, each row sorted by
    increasing distance."""
    mirrored = row != column
    row, column = np.concatenate([row, column[mirrored]]), np.concatenate([column, row[mirrored]])
    distance = np.concatenate([distance, distance[mirrored]])
    del mirrored
    # non-negative float32 values order as their bit patterns: one stable sort by (row, distance)
    order = np.argsort(row.astype(np.int64) << 32 | distance.view(np.uint32), kind="stable")
    indptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=size), out=indptr[1:])
    index_dtype = np.int32 if max(indptr[-1], size) < 2**31 else np.int64
    return csr_matrix(
        (distance[order], column[order].astype(index_dtype), indptr.astype(index_dtype)), shape=(size, size)
    )


def _same_camera_penalty(features: Tensor, cameras: Tensor | None, penalty: float) -> tuple[Tensor, float] | None:
    """(camera per probe on the features' device, penalty) for :func:`_jaccard_rows`, or None for no penalty."""
    if not 0.0 <= float(penalty) < math.inf:
        raise ValueError(f"camera_penalty must be a finite number >= 0, got {penalty!r}")
    if penalty == 0.0:
        return None
    if cameras is None or tuple(cameras.shape) != (features.shape[0],):
        raise ValueError(f"camera_penalty needs one camera per feature row ({features.shape[0]}), got {cameras!r}")
    return cameras.to(features.device), float(penalty)


def _jaccard_rows(
    features: Tensor, k1: int, k2: int, block_size: int | None, same_camera: tuple[Tensor, float] | None = None
) -> tuple[Tensor, Tensor, int]:
    """The sparse rows of V (probe indices padded with N, weights) among one set of (N >= 1, D) features, and
    the temporaries budget in bytes; ``same_camera`` (cameras, penalty) adds the penalty to the squared distance
    of two probes from one camera."""
    num_all = features.shape[0]
    if not bool(torch.isfinite(features).all()):
        raise DataError(
            "clustering got NaN or infinite features; the model produced invalid embeddings "
            "(diverged training or a broken checkpoint)"
        )
    element_size = features.element_size()
    budget = _block_budget(features.device)
    tile = block_size or max(256, math.isqrt(budget // (3 * element_size)))
    index_elements = max(1, budget // 32)
    k_forward = min(k1 + 1, num_all)
    k_half = min(int(round(k1 / 2)) + 1, num_all)
    k_expand = min(k2, num_all)
    squared_norms = torch.einsum("nd,nd->n", features, features)
    # an empty (N, 0) "query x gallery" block: only the neighbours and row maxima are needed here
    neighbours, row_max = _nearest_neighbours(
        features, squared_norms, max(k_forward, k_expand), tile, features.new_empty((0, 0)), same_camera
    )
    row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))
    forward, half = neighbours[:, :k_forward], neighbours[:, :k_half]
    members = _expanded_reciprocal_sets(
        forward, _reciprocal_mask(forward, index_elements), half, _reciprocal_mask(half, index_elements), index_elements
    )
    weights = _gaussian_weights(features, squared_norms, row_max, members, budget, same_camera)
    if k_expand > 1:
        members, weights = _query_expansion(members, weights, neighbours[:, :k_expand], index_elements)
    return members, weights, budget


def _block_budget(device: torch.device) -> int:
    """Bytes of temporaries per block: 256 MiB on CPU; on CUDA 2 GiB or 1/8 of the free memory."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return max(64 * 2**20, min(_GPU_BLOCK_BYTES, free_bytes // 8))
    return _CPU_BLOCK_BYTES


def _check_arguments(
    query_features: Tensor,
    gallery_features: Tensor,
    k1: int,
    k2: int,
    lambda_value: float,
    block_size: int | None,
) -> None:
    """Raise ValueError for bad re-ranking parameters or misshaped inputs."""
    if isinstance(k1, bool) or not isinstance(k1, int) or k1 < 1:
        raise ValueError(f"k1 must be an integer >= 1, got {k1!r}")
    if isinstance(k2, bool) or not isinstance(k2, int) or k2 < 1:
        raise ValueError(f"k2 must be an integer >= 1, got {k2!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value!r}")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    if query_features.dim() != 2 or gallery_features.dim() != 2:
        raise ValueError(
            "re_ranking expects (Q, D) query and (G, D) gallery features, got shapes "
            f"{tuple(query_features.shape)} and {tuple(gallery_features.shape)}."
        )
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(
            f"query features have {query_features.shape[1]} dimensions but gallery features have "
            f"{gallery_features.shape[1]}; extract both with the same model."
        )
    if query_features.device != gallery_features.device:
        raise ValueError(
            f"query features are on {query_features.device} but gallery features on "
            f"{gallery_features.device}; move both to one device."
        )


def _nearest_neighbours(
    features: Tensor,
    squared_norms: Tensor,
    k: int,
    tile: int,
    query_gallery: Tensor,
    same_camera: tuple[Tensor, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k nearest probes (sorted, self included) and the maximum distance of every row.

    Each symmetric tile (a, b) with a <= b is computed once and serves rows of both blocks; the
    query x gallery part of the raw distances is copied into ``query_gallery``. ``same_camera`` (cameras,
    penalty): the penalty is added to the distance of two probes from one camera (not a probe's own).
    """
    num_all = features.shape[0]
    device, dtype = features.device, features.dtype
    best_distance = torch.full((num_all, k), math.inf, dtype=dtype, device=device)
    best_index = torch.zeros((num_all, k), dtype=torch.long, device=device)
    row_max = torch.zeros(num_all, dtype=dtype, device=device)
    tile = min(tile, num_all)
    # Two reused tile buffers: fresh large allocations cost page faults on every tile.
    tile_buffer = torch.empty(tile * tile, dtype=dtype, device=device)
    transposed_buffer = torch.empty(tile * tile, dtype=dtype, device=device)
    starts = list(range(0, num_all, tile))
    for position, a in enumerate(starts):
        a_stop = min(a + tile, num_all)
        for b in starts[position:]:
            b_stop = min(b + tile, num_all)
            shape = (a_stop - a, b_stop - b)
            distance = tile_buffer[: shape[0] * shape[1]].view(shape)
            torch.addmm(squared_norms[b:b_stop], features[a:a_stop], features[b:b_stop].T, alpha=-2.0, out=distance)
            distance.add_(squared_norms[a:a_stop, None]).clamp_(min=0.0)
            if same_camera is not None:
                cameras, penalty = same_camera
                distance.add_(cameras[a:a_stop, None] == cameras[None, b:b_stop], alpha=penalty)
            if a == b:  # self distance is exactly 0; the expansion above leaves rounding noise
                distance.diagonal().zero_()
            _merge_top_k(best_distance, best_index, a, distance, b)
            torch.maximum(row_max[a:a_stop], distance.amax(1), out=row_max[a:a_stop])
            _copy_query_gallery(query_gallery, distance, a, b)
            if a != b:
                # Top-k along contiguous rows is several times faster than along columns.
                transposed = transposed_buffer[: shape[0] * shape[1]].view(shape[::-1])
                transposed.copy_(distance.T)
                _merge_top_k(best_distance, best_index, b, transposed, a)
                torch.maximum(row_max[b:b_stop], transposed.amax(1), out=row_max[b:b_stop])
                _copy_query_gallery(query_gallery, transposed, b, a)
    return best_index, row_max


def _merge_top_k(
    best_distance: Tensor, best_index: Tensor, row_start: int, distance: Tensor, column_start: int
) -> None:
    """Merge the k smallest entries of each row of a distance tile into the running top-k."""
    rows = slice(row_start, row_start + distance.shape[0])
    k = best_distance.shape[1]
    tile_distance, tile_index = distance.topk(min(k, distance.shape[1]), dim=1, largest=False)
    candidates = torch.cat([best_distance[rows], tile_distance], dim=1)
    indices = torch.cat([best_index[rows], tile_index + column_start], dim=1)
    merged_distance, order = candidates.topk(k, dim=1, largest=False)
    best_distance[rows] = merged_distance
    best_index[rows] = indices.gather(1, order)


def _copy_query_gallery(query_gallery: Tensor, distance: Tensor, row_start: int, column_start: int) -> None:
    """Copy the part of a distance tile with query rows and gallery columns into the output."""
    num_query = query_gallery.shape[0]
    row_stop = min(row_start + distance.shape[0], num_query)
    column_from = max(column_start, num_query)
    column_stop = column_start + distance.shape[1]
    if row_stop <= row_start or column_stop <= column_from:
        return
    source = distance[: row_stop - row_start, column_from - column_start :]
    query_gallery[row_start:row_stop, column_from - num_query : column_stop - num_query] = source


def _reciprocal_mask(neighbours: Tensor, chunk_elements: int) -> Tensor:
    """mask[i, j] is True when probe i is itself among the neighbours of neighbours[i, j]."""
    num_all, k = neighbours.shape
    mask = torch.empty((num_all, k), dtype=torch.bool, device=neighbours.device)
    chunk_rows = max(1, chunk_elements // (k * k))
    for start in range(0, num_all, chunk_rows):
        stop = min(start + chunk_rows, num_all)
        backward = neighbours[neighbours[start:stop]]  # (rows, k, k)
        probe = torch.arange(start, stop, device=neighbours.device)[:, None, None]
        mask[start:stop] = (backward == probe).any(dim=2)
    return mask


def _expanded_reciprocal_sets(
    forward: Tensor, forward_mask: Tensor, half: Tensor, half_mask: Tensor, chunk_elements: int
) -> Tensor:
    """k-reciprocal sets grown by the half-size reciprocal sets of their members.

    A member c adds its own round(k1/2)-reciprocal set R(c) when more than 2/3 of R(c) already
    lies in the probe's k1-reciprocal set. Returns (N, width) sorted probe indices padded with N.
    """
    num_all, k_forward = forward.shape
    chunk_rows = max(1, chunk_elements // (k_forward * (half.shape[1] + 1)))
    blocks = []
    for start in range(0, num_all, chunk_rows):
        stop = min(start + chunk_rows, num_all)
        candidates, candidate_mask = forward[start:stop], forward_mask[start:stop]
        reciprocal = torch.where(candidate_mask, candidates, num_all)
        reciprocal_sorted = reciprocal.sort(dim=1).values
        # Half-size reciprocal set of every candidate: (rows, k_forward, k_half).
        candidate_sets = half[candidates]
        candidate_set_mask = half_mask[candidates] & candidate_mask[:, :, None]
        flat = candidate_sets.flatten(1)
        position = torch.searchsorted(reciprocal_sorted, flat).clamp_(max=k_forward - 1)
        shared = (reciprocal_sorted.gather(1, position) == flat).view_as(candidate_sets)
        shared &= candidate_set_mask
        # Integer form of "overlap > 2/3 * size"; equal to the float test for every size.
        accepted = 3 * shared.sum(2) > 2 * candidate_set_mask.sum(2)
        additions = torch.where(candidate_set_mask & accepted[:, :, None], candidate_sets, num_all)
        blocks.append(_unique_rows(torch.cat([reciprocal, additions.flatten(1)], dim=1), num_all))
    return _pad_blocks(blocks, num_all)


def _unique_rows(index: Tensor, pad: int) -> Tensor:
    """Sort each row, replace repeats by ``pad`` and trim the columns that are padding everywhere."""
    ordered = index.sort(dim=1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    ordered = ordered.masked_fill(repeated, pad).sort(dim=1).values
    width = int((ordered < pad).sum(1).max())
    return ordered[:, : max(width, 1)]


def _pad_blocks(blocks: list[Tensor], fill: float) -> Tensor:
    """Stack row blocks of different widths, filling the missing right-hand columns with ``fill``."""
    width = max(block.shape[1] for block in blocks)
    rows = sum(block.shape[0] for block in blocks)
    first = blocks[0]
    stacked = torch.full((rows, width), fill, dtype=first.dtype, device=first.device)
    start = 0
    for block in blocks:
        stacked[start : start + block.shape[0], : block.shape[1]] = block
        start += block.shape[0]
    return stacked


def _gaussian_weights(
    features: Tensor,
    squared_norms: Tensor,
    row_max: Tensor,
    members: Tensor,
    budget: int,
    same_camera: tuple[Tensor, float] | None = None,
) -> Tensor:
    """V[i, j] = exp(-d(i, j)) normalised over the expanded set of i (0 on padding); ``same_camera`` as in
    :func:`_nearest_neighbours`."""
    num_all, dim = features.shape
    valid = members < num_all
    probe = torch.arange(num_all, device=members.device)[:, None].expand_as(members)[valid]
    member = members[valid]
    distance = torch.empty(member.shape, dtype=features.dtype, device=features.device)
    # Gather both sides of a batch of pairs into reused buffers, then one row-wise dot product each.
    chunk = max(1, min(member.shape[0], budget // (2 * dim * features.element_size())))
    probe_buffer = features.new_empty((chunk, dim))
    member_buffer = features.new_empty((chunk, dim))
    for start in range(0, member.shape[0], chunk):
        stop = min(start + chunk, member.shape[0])
        left = torch.index_select(features, 0, probe[start:stop], out=probe_buffer[: stop - start])
        right = torch.index_select(features, 0, member[start:stop], out=member_buffer[: stop - start])
        distance[start:stop] = torch.einsum("pd,pd->p", left, right)
    distance.mul_(-2.0).add_(squared_norms[probe]).add_(squared_norms[member]).clamp_(min=0.0)
    if same_camera is not None:
        cameras, penalty = same_camera
        distance.add_((cameras[probe] == cameras[member]) & (probe != member), alpha=penalty)
    distance.div_(row_max[probe])
    weights = torch.zeros(members.shape, dtype=features.dtype, device=features.device)
    weights[valid] = torch.exp(-distance)
    # An empty set (possible only with many duplicate features) keeps an all-zero row.
    total = weights.sum(1, keepdim=True).clamp_(min=torch.finfo(weights.dtype).tiny)
    return weights.div_(total)


def _query_expansion(
    members: Tensor, weights: Tensor, neighbours: Tensor, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Replace every row of V by the mean of the rows of its k2 nearest probes (sparse rows)."""
    num_all = members.shape[0]
    k2 = neighbours.shape[1]
    chunk_rows = max(1, chunk_elements // (k2 * members.shape[1]))
    index_blocks, weight_blocks = [], []
    for start in range(0, num_all, chunk_rows):
        stop = min(start + chunk_rows, num_all)
        rows = neighbours[start:stop]
        index = members[rows].flatten(1)
        weight = weights[rows].flatten(1)
        index, order = index.sort(dim=1)
        weight = weight.gather(1, order)
        # Equal indices are adjacent after sorting: sum each run into one entry.
        new_run = torch.ones_like(index, dtype=torch.bool)
        new_run[:, 1:] = index[:, 1:] != index[:, :-1]
        run = new_run.cumsum(1) - 1
        summed = torch.zeros_like(weight).scatter_add_(1, run, weight).div_(k2)
        merged = torch.full_like(index, num_all).scatter_(1, run, index)
        width = max(int((merged < num_all).sum(1).max()), 1)
        index_blocks.append(merged[:, :width])
        weight_blocks.append(summed[:, :width])
    return _pad_blocks(index_blocks, num_all), _pad_blocks(weight_blocks, 0.0)


def _blend_jaccard(
    output: Tensor,
    members: Tensor,
    weights: Tensor,
    num_query: int,
    lambda_value: float,
    query_rows: int,
    pair_budget: int,
    gallery_start: int | None = None,
) -> None:
    """output <- lambda * output + (1 - lambda) * Jaccard(query, gallery), in query blocks.

    Queries are the first ``num_query`` probes, the gallery the probes from ``gallery_start`` on (default
    ``num_query``; 0 makes every probe a gallery item too).

    sum_c min(V[q, c], V[g, c]) only has terms where both rows are non-zero, so each non-zero
    column c of a query is paired with the gallery rows of c's posting list.
    """
    num_all = members.shape[0]
    gallery_start = num_query if gallery_start is None else gallery_start
    gallery_members = members[gallery_start:]
    nonzero = gallery_members < num_all
    rows = torch.arange(num_all - gallery_start, device=members.device)[:, None].expand_as(gallery_members)
    posting = _inverted_index(gallery_members[nonzero], rows[nonzero], weights[gallery_start:][nonzero], num_all)[:4]
    del gallery_members, nonzero, rows
    query_members, query_weights = members[:num_query], weights[:num_query]
    pairs_per_query = posting[3][query_members].sum(1)
    for start, stop, total_pairs in _query_blocks(pairs_per_query, query_rows, pair_budget):
        overlap = _min_overlap(
            query_members[start:stop], query_weights[start:stop], *posting, num_all - gallery_start, total_pairs
        )
        # jaccard = 1 - overlap / (2 - overlap), blended in place to spare (rows, G) temporaries.
        ratio = overlap.div_(2.0 - overlap)
        block = output[start:stop].mul_(lambda_value)
        block.add_(ratio.to(output.dtype), alpha=-(1.0 - lambda_value)).add_(1.0 - lambda_value)


def _inverted_index(
    columns: Tensor, rows: Tensor, weights: Tensor, num_columns: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Inverted index of the non-zero entries (rows[e], columns[e], weights[e]) of V, listed row by row:
    column -> (row, weight), grouped by column with rows ascending, as (posting_row, posting_weight,
    posting_start, posting_length, entry_posting); ``posting_length`` has ``num_columns + 1`` entries (the
    last, the padding column, is 0) and ``entry_posting[e]`` is where entry e landed."""
    order = torch.argsort(columns, stable=True)
    posting_row = torch.index_select(rows, 0, order)
    posting_weight = torch.index_select(weights, 0, order)
    posting_length = torch.bincount(columns, minlength=num_columns + 1)
    posting_start = posting_length.cumsum(0) - posting_length
    entry_posting = torch.empty_like(order).index_copy_(0, order, torch.arange(order.shape[0], device=order.device))
    return posting_row, posting_weight, posting_start, posting_length, entry_posting


def _query_blocks(pairs_per_query: Tensor, query_rows: int, pair_budget: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, pairs) of consecutive query blocks of at most ``query_rows`` queries and about
    ``pair_budget`` (query, gallery posting) pairs (at least one query each)."""
    num_query = pairs_per_query.shape[0]
    cumulative = pairs_per_query.cumsum(0).cpu()
    start = 0
    while start < num_query:
        done = int(cumulative[start - 1]) if start else 0
        stop = int(torch.searchsorted(cumulative, done + pair_budget, right=True))
        stop = min(max(stop, start + 1), start + query_rows, num_query)
        yield start, stop, int(cumulative[stop - 1]) - done
        start = stop


def _min_overlap(
    query_members: Tensor,
    query_weights: Tensor,
    posting_row: Tensor,
    posting_weight: Tensor,
    posting_start: Tensor,
    posting_length: Tensor,
    num_gallery: int,
    total_pairs: int,
) -> Tensor:
    """(rows, G) float64 matrix of sum_c min(V[q, c], V[g, c]) for a block of queries.

    Accumulated in float64: the scatter-add order of CUDA atomics varies from run to run, and in float32
    that rounding noise can swap near-tied gallery items; in float64 it stays far below float32 output."""
    rows = query_members.shape[0]
    overlap = torch.zeros(rows * num_gallery, dtype=torch.float64, device=query_weights.device)
    if total_pairs == 0:
        return overlap.view(rows, num_gallery)
    lengths = posting_length[query_members]
    used = lengths > 0
    entry_row = torch.arange(rows, device=lengths.device)[:, None].expand_as(lengths)[used]
    target, shared = _expand_pairs(
        entry_row * num_gallery,
        query_weights[used],
        torch.index_select(posting_start, 0, query_members[used]),
        lengths[used],
        posting_row,
        posting_weight,
        total_pairs,
    )
    overlap.index_add_(0, target, shared.double())
    return overlap.view(rows, num_gallery)


def _expand_pairs(
    entry_base: Tensor,
    entry_weight: Tensor,
    entry_start: Tensor,
    entry_length: Tensor,
    posting_row: Tensor,
    posting_weight: Tensor,
    total_pairs: int,
) -> tuple[Tensor, Tensor]:
    """Expand every (query, column) entry into one pair per posting of its run ``entry_start`` ..
    ``entry_start + entry_length - 1``: the pair's target ``entry_base + posting row`` and its term
    min(V[q, c], V[g, c]) > 0 (``total_pairs`` = the sum of the lengths)."""
    device, dtype = entry_length.device, entry_length.dtype  # int64 or int32 indices throughout
    pair_entry = torch.repeat_interleave(
        torch.arange(entry_length.shape[0], device=device, dtype=dtype), entry_length, output_size=total_pairs
    )
    shift = entry_start - (entry_length.cumsum(0, dtype=dtype) - entry_length)
    # index_select: several times faster than indexing with a tensor on CPU
    position = torch.index_select(shift, 0, pair_entry).add_(torch.arange(total_pairs, device=device, dtype=dtype))
    shared = torch.minimum(
        torch.index_select(entry_weight, 0, pair_entry), torch.index_select(posting_weight, 0, position)
    )
    target = torch.index_select(entry_base, 0, pair_entry).add_(torch.index_select(posting_row, 0, position))
    return target, shared
