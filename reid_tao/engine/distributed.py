"""Gathering per-process evaluation results back into dataset order."""
from typing import Callable

import torch


def gather_by_index(all_gather: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                    indices: torch.Tensor, total: int, world_size: int) -> torch.Tensor:
    """Rows computed by each process for its dataset `indices` -> (total, C) in dataset order, on every rank.

    A row with index -1 is dropped (an item a rank borrowed so that it runs its loop, see
    :class:`~reid_tao.data.datasets.ShardSampler`). Every rank must call this, also with no rows: it
    runs two all_gathers. Shards may differ in size, while all_gather needs equal shapes: pad with index
    -1, gather, drop padding.
    """
    indices = indices.to(rows.device)
    out = rows.new_empty((total, rows.shape[1]))
    if world_size == 1:
        keep = indices >= 0
        out[indices[keep]] = rows[keep]
        return out
    # A shard holds at most ceil(total / world_size) own rows, plus one borrowed row when it is empty.
    longest = (total + world_size - 1) // world_size + 1
    if len(rows) > longest:
        raise ValueError(f"rows: {len(rows)} rows for one process exceed the shard size {longest}")
    padded_rows = rows.new_zeros((longest, rows.shape[1]))
    padded_index = torch.full((longest,), -1, dtype=torch.long, device=rows.device)
    padded_rows[: len(rows)] = rows
    padded_index[: len(rows)] = indices
    gathered_rows = all_gather(padded_rows).reshape(-1, rows.shape[1])
    gathered_index = all_gather(padded_index).reshape(-1)
    keep = gathered_index >= 0
    out[gathered_index[keep]] = gathered_rows[keep]
    return out
