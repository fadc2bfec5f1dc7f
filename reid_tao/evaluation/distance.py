"""Query-gallery distance matrix for re-identification features."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from reid_tao.errors import DataError

# Output elements per matmul: large enough for an efficient GEMM; blocks only bound the temporaries.
_BLOCK_ELEMENTS = 1 << 24
_EPS = 1e-12  # as torch.nn.functional.normalize: a zero feature stays zero


def _as_features(features: Tensor | np.ndarray, name: str) -> Tensor:
    tensor = torch.as_tensor(features) if not isinstance(features, Tensor) else features
    if tensor.dim() != 2:
        raise DataError(f"{name} must be a 2-D (num_images, feature_dim) array, got shape {tuple(tensor.shape)}")
    # Half/bfloat16 features (mixed precision) lose too much in the matmul; float64 is kept as is.
    if tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor


def _scaled_with_squared_norms(features: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """The features (L2-normalised if asked) and their squared norms, without a (N, D) temporary."""
    norms = torch.linalg.vector_norm(features, dim=1)
    if not normalize:
        return features, norms.square()
    scale = norms.clamp(min=_EPS).reciprocal()
    return features * scale.unsqueeze(1), (norms * scale).square()  # 1, or 0 for a zero feature


def pairwise_distance(query: Tensor | np.ndarray, gallery: Tensor | np.ndarray, normalize: bool = True) -> Tensor:
    """Squared Euclidean distances between every query and gallery feature, shape (Q, G), float32.

    With ``normalize`` (the default) features are L2-normalised first, so the distance is 2 - 2 * cos.
    Computed as |q|^2 + |g|^2 - 2 q.g with one matmul per block of query rows, on the query's device
    (the gallery is moved there); tiny negative values from rounding are clamped to 0.
    """
    query = _as_features(query, "query features")
    gallery = _as_features(gallery, "gallery features").to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise DataError(
            f"query features have {query.shape[1]} dimensions but gallery features have {gallery.shape[1]}; "
            "extract both with the same model"
        )
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    query, gallery = query.to(dtype), gallery.to(dtype)
    query, query_sq = _scaled_with_squared_norms(query, normalize)
    gallery, gallery_sq = _scaled_with_squared_norms(gallery, normalize)
    gallery_t = gallery.t()

    num_query, num_gallery = query.shape[0], gallery.shape[0]
    out = torch.empty((num_query, num_gallery), dtype=dtype, device=query.device)
    rows = max(1, _BLOCK_ELEMENTS // max(1, num_gallery))
    for begin in range(0, num_query, rows):
        end = min(begin + rows, num_query)
        block = out[begin:end]
        torch.addmm(gallery_sq.unsqueeze(0), query[begin:end], gallery_t, beta=1.0, alpha=-2.0, out=block)
        block.add_(query_sq[begin:end].unsqueeze(1)).clamp_(min=0.0)
    return out.float() if out.dtype != torch.float32 else out
