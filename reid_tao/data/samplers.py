"""Identity-balanced ("PK") batch sampling for metric-learning losses, single- and multi-process.

A PK batch holds P identities x K images each, which batch-hard triplet mining needs (every anchor
has K-1 positives in the batch). In distributed training all ranks build the same *global* plan of
P*world_size identities per step and each rank takes its own P identities, so ranks never share an
identity within a step, all ranks run the same number of steps (no DDP hang), and the plan is a pure
function of (seed, epoch, world_size): resuming at epoch e replays exactly the batches of epoch e.

For shuffled softmax-only batches use ``torch.utils.data.DistributedSampler(shuffle=True, seed=...,
drop_last=True)``, which already reseeds with ``seed + epoch`` every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["CyclingSampler", "PKSampler", "SubsetSampler"]

_UINT64 = 2**64


class PKSampler(torch.utils.data.Sampler[int]):
    """Yields flat dataset indices; every consecutive ``batch_size`` slice is one PK batch.

    Args:
        pids: identity label of every dataset item (any integers; only equality matters).
        batch_size: per-process batch size, a multiple of ``num_instances``.
        num_instances: K, images per identity in a batch.
        seed: base seed; the epoch plan is seeded from ``(seed, epoch)``.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing each global batch.
        cameras: the camera of every dataset item, or None. Given, each identity's images are taken in turns
            from its cameras, so a chunk of K spans as many cameras as the identity has (pseudo identities of
            domain adaptation: the cross-camera pairs are what the model must learn).

    Per epoch: each identity's images are shuffled (identities with fewer than K images are sampled
    with replacement up to K) and cut into chunks of K (the incomplete remainder is dropped). Then,
    repeatedly, P*world_size distinct identities that still have chunks are drawn uniformly at
    random and each gives one chunk, forming a global batch, until fewer than P*world_size identities
    have chunks left. Every epoch has the length of epoch 0's draw (cut, or continued with a fresh
    round of chunks), so Lightning's one-time length measurement holds. Rank r yields identities
    ``r*P .. (r+1)*P-1`` of every global batch, so concatenating the ranks' batches of one step gives
    exactly the batch of a single-process sampler with ``batch_size * world_size``.

    Raises ValueError, naming the argument, for invalid arguments and for ``pids`` with fewer than
    ``batch_size // num_instances * world_size`` identities (the data module and the config check the
    same rules first, in the user's terms).
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        cameras: Sequence[int] | None = None,
    ) -> None:
        if num_instances < 1:
            raise ValueError(f"PKSampler: num_instances must be >= 1, got {num_instances}")
        if batch_size < 1 or batch_size % num_instances != 0:
            raise ValueError(
                f"PKSampler: batch_size {batch_size} is not a positive multiple of num_instances {num_instances}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: rank {rank} is outside [0, world_size={world_size})")

        labels = np.asarray(pids)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("PKSampler: pids is empty")
        _, self._label_index = np.unique(labels, return_inverse=True)
        self._label_index = self._label_index.reshape(-1).astype(np.int64)
        self._num_ids = int(self._label_index.max()) + 1
        if cameras is not None:
            if len(cameras) != labels.size:
                raise ValueError(f"PKSampler: {len(cameras)} cameras for {labels.size} pids")
            self._camera_index = np.unique(np.asarray(cameras), return_inverse=True)[1].reshape(-1)
        else:
            self._camera_index = None

        self.batch_size = batch_size
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

        global_ids = self.ids_per_batch * world_size
        if self._num_ids < global_ids:
            raise ValueError(
                f"PKSampler: pids holds {self._num_ids} identities but a PK batch needs batch_size / "
                f"num_instances = {self.ids_per_batch} per process x world_size {world_size} = {global_ids}"
            )

        self._counts = np.bincount(self._label_index, minlength=self._num_ids)
        self._starts = np.concatenate(([0], np.cumsum(self._counts)[:-1]))
        self._cached_epoch: int | None = None
        self._cached_indices: np.ndarray | None = None
        self._num_batches = len(self._plan(0, num_batches=None))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan ``__iter__`` and ``__len__`` use (Lightning calls this)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices().tolist())

    def __len__(self) -> int:
        return int(self._epoch_indices().size)

    def global_batches(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's global plan, shape ``(num_batches, P*world_size, K)`` of dataset indices."""
        return self._plan(self.epoch if epoch is None else int(epoch))

    def _epoch_indices(self) -> np.ndarray:
        if self._cached_epoch != self.epoch or self._cached_indices is None:
            plan = self._plan(self.epoch)
            p = self.ids_per_batch
            self._cached_indices = plan[:, self.rank * p : (self.rank + 1) * p, :].reshape(-1)
            self._cached_epoch = self.epoch
        return self._cached_indices

    def _camera_turns(self, shuffled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reorder each identity's shuffled images so that its cameras take turns: first one image of each
        camera (the cameras in a random order), then a second of each, and so on."""
        labels, cameras = self._label_index[shuffled], self._camera_index[shuffled]
        by_group = np.lexsort((cameras, labels))  # stable: keeps the shuffle inside each (identity, camera)
        group_key = labels[by_group] * (int(cameras.max()) + 1) + cameras[by_group]
        starts = np.flatnonzero(np.r_[True, group_key[1:] != group_key[:-1]])
        turn = np.empty(shuffled.size, dtype=np.int64)
        turn[by_group] = np.arange(shuffled.size) - np.repeat(starts, np.diff(np.r_[starts, shuffled.size]))
        camera_order = rng.random(int(cameras.max()) + 1)[cameras]  # a random camera order per epoch
        return shuffled[np.lexsort((camera_order, turn, labels))]

    def _plan(self, epoch: int, num_batches: int | None = -1) -> np.ndarray:
        """num_batches: -1 = the fixed epoch length, None = the natural length of this draw."""
        if num_batches == -1:
            num_batches = self._num_batches
        k = self.num_instances
        global_ids = self.ids_per_batch * self.world_size
        rng = np.random.default_rng([self.seed % _UINT64, epoch % _UINT64])

        # Shuffle inside each identity: sort by (identity, random key).
        keys = rng.random(self._label_index.size)
        shuffled = np.lexsort((keys, self._label_index))
        if self._camera_index is not None:
            shuffled = self._camera_turns(shuffled, rng)

        # Chunks of K per identity; identities with < K images get one chunk drawn with replacement.
        chunks_per_id = np.maximum(self._counts // k, 1)
        slots_per_id = chunks_per_id * k
        owner = np.repeat(np.arange(self._num_ids), slots_per_id)
        slot_starts = np.concatenate(([0], np.cumsum(slots_per_id)[:-1]))
        offset_in_id = np.arange(owner.size) - slot_starts[owner]
        short = self._counts[owner] < k
        resampled = (rng.random(owner.size) * self._counts[owner]).astype(np.int64)
        offset_in_id = np.where(short, resampled, offset_in_id)
        chunks = shuffled[self._starts[owner] + offset_in_id].reshape(-1, k)
        first_chunk = np.concatenate(([0], np.cumsum(chunks_per_id)[:-1]))

        # Draw the batches; each step depends on the previous one, so this loop is per batch.
        # Every epoch gets the length of epoch 0's natural plan (Lightning measures the length once):
        # a longer draw is cut, a shorter one reuses the chunks of a fresh round.
        remaining = chunks_per_id.copy()
        taken = np.zeros_like(remaining)
        batches: list[np.ndarray] = []
        available = np.flatnonzero(remaining)
        while len(batches) < (num_batches if num_batches is not None else np.inf):
            if available.size < global_ids:
                if num_batches is None:
                    break
                remaining, taken = chunks_per_id.copy(), np.zeros_like(remaining)
                available = np.flatnonzero(remaining)
            chosen = rng.choice(available, size=global_ids, replace=False)
            batches.append(first_chunk[chosen] + taken[chosen])
            taken[chosen] += 1
            remaining[chosen] -= 1
            if not remaining[chosen].all():
                available = np.flatnonzero(remaining)
        if not batches:
            return np.empty((0, global_ids, k), dtype=np.int64)
        return chunks[np.stack(batches)].astype(np.int64, copy=False)


class SubsetSampler(torch.utils.data.Sampler[int]):
    """Maps the indices of ``sampler`` (over a subset) back to dataset indices: ``indices[i]`` for item i.

    Used to draw PK batches over the clustered images only (outliers keep their place in the dataset, so
    a decoded-image cache of the whole set stays valid across re-clusterings)."""

    def __init__(self, sampler: torch.utils.data.Sampler[int], indices: Sequence[int]) -> None:
        self.sampler = sampler
        self.indices = np.asarray(indices, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices[np.fromiter(iter(self.sampler), dtype=np.int64)].tolist())


class CyclingSampler(torch.utils.data.Sampler[int]):
    """``length`` indices per epoch from ``sampler``'s epochs played one after the other, as one endless stream:
    epoch e yields stream positions ``e * length .. (e + 1) * length - 1``, where stream position p is item
    ``p % len(sampler)`` of ``sampler``'s epoch ``p // len(sampler)``.

    A second data stream whose epochs must last as long as the main one's (``length``): the labelled source of
    domain adaptation cycles through its own PK epochs (each a fresh draw) however many the target's epoch needs.
    A pure function of the epoch, like the samplers it wraps; ``sampler`` must keep one length for all epochs
    (:class:`PKSampler` does) and be a multiple of the batch size, so the stream's batches stay whole."""

    def __init__(self, sampler: torch.utils.data.Sampler[int], length: int) -> None:
        if length < 0:
            raise ValueError(f"CyclingSampler: length must be >= 0, got {length}")
        if len(sampler) == 0 and length > 0:
            raise ValueError("CyclingSampler: the cycled sampler is empty")
        self.sampler, self.length, self.epoch = sampler, int(length), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if self.length == 0:
            return iter(())
        period = len(self.sampler)
        first, last = self.epoch * self.length, (self.epoch + 1) * self.length  # stream positions [first, last)
        parts = []
        for cycle in range(first // period, (last - 1) // period + 1):
            self.sampler.set_epoch(cycle)
            parts.append(np.fromiter(iter(self.sampler), dtype=np.int64, count=period))
        start = first - (first // period) * period
        return iter(np.concatenate(parts)[start : start + self.length].tolist())
