"""Gathering per-process evaluation results back into dataset order."""
from typing import Callable

import torch


def gather_by_index(all_gather: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                    indices: torch.Tensor, total: int, world_size: int) -> torch.Tensor:
    """Rows computed by each process for its dataset `indices` -> (total, C) in dataset order, on every rank.

    Shards may differ in size, while all_gather needs equal shapes: pad with index -1, gather, drop padding.
    """
    if world_size == 1:
        out = rows.new_empty((total, rows.shape[1]))
        out[indices.to(rows.device)] = rows
        return out
    longest = (total + world_size - 1) // world_size + 1
    padded_rows = rows.new_zeros((longest, rows.shape[1]))
    padded_index = torch.full((longest,), -1, dtype=torch.long, device=rows.device)
    padded_rows[: len(rows)] = rows
    padded_index[: len(rows)] = indices.to(rows.device)
    gathered_rows = all_gather(padded_rows).reshape(-1, rows.shape[1])
    gathered_index = all_gather(padded_index).reshape(-1)
    keep = gathered_index >= 0
    out = rows.new_empty((total, rows.shape[1]))
    out[gathered_index[keep]] = gathered_rows[keep]
    return out
