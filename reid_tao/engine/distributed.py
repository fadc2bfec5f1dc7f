"""Gathering per-process evaluation results back into dataset order."""

from collections.abc import Callable

import torch
import torch.distributed as dist


def gather_by_index(
    all_gather: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    indices: torch.Tensor,
    total: int,
    world_size: int,
) -> torch.Tensor:
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


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process ``src``'s buffers (BatchNorm running statistics), one broadcast per dtype.

    DDP broadcasts buffers before a forward only while Lightning asks it to; with manual optimisation its
    forward redirection leaves that off after the first step, so each rank's BatchNorm statistics drift
    with its own data. Called once per validation (not per forward: with uneven shards a rank would wait
    in a broadcast that the others never reach). A no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    by_dtype = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src)
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.data.copy_(part.view_as(buffer))
