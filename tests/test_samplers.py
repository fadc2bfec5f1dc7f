"""PKSampler: batch composition, replacement, reshuffling, determinism and the distributed split."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from reid_tao.data.samplers import PKSampler


def _pids(counts: list[int], first_pid: int = 1) -> np.ndarray:
    return np.repeat(np.arange(first_pid, first_pid + len(counts)), counts)


def _batches(sampler: PKSampler) -> np.ndarray:
    flat = np.fromiter(iter(sampler), dtype=np.int64)
    assert flat.size % sampler.batch_size == 0
    return flat.reshape(-1, sampler.batch_size)


@pytest.fixture
def mixed_pids() -> np.ndarray:
    rng = np.random.default_rng(7)
    return _pids(rng.integers(1, 30, size=60).tolist())


def test_every_batch_is_p_identities_times_k(mixed_pids: np.ndarray) -> None:
    sampler = PKSampler(mixed_pids, batch_size=32, num_instances=4, seed=3)
    batches = _batches(sampler)
    assert len(batches) > 5
    for batch in batches:
        labels = mixed_pids[batch]
        # Identities come as consecutive runs of K, and the P runs are distinct identities.
        runs = labels.reshape(8, 4)
        assert (runs == runs[:, :1]).all()
        assert len(set(runs[:, 0].tolist())) == 8


def test_images_are_distinct_unless_the_identity_is_short(mixed_pids: np.ndarray) -> None:
    counts = np.bincount(mixed_pids)
    sampler = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=0)
    flat = np.fromiter(iter(sampler), dtype=np.int64)
    labels = mixed_pids[flat]
    long_items = flat[counts[labels] >= 4]
    # Identities with >= K images are cut into disjoint chunks: no image repeats within an epoch.
    assert np.unique(long_items).size == long_items.size


def test_identities_with_fewer_than_k_images_are_sampled_with_replacement() -> None:
    pids = _pids([1, 2, 3, 4, 8])  # ids 1..3 have fewer than K=4 images
    sampler = PKSampler(pids, batch_size=20, num_instances=4, seed=0)
    batches = _batches(sampler)
    assert len(batches) == 1  # pid 5 has 2 chunks but every other id is used up after one batch
    runs = pids[batches[0]].reshape(5, 4)
    assert sorted(runs[:, 0].tolist()) == [1, 2, 3, 4, 5]
    for run_indices in batches[0].reshape(5, 4):
        pid = pids[run_indices[0]]
        own = set(np.flatnonzero(pids == pid).tolist())
        assert set(run_indices.tolist()) <= own
        if pid == 1:
            assert len(set(run_indices.tolist())) == 1  # one image repeated K times


def test_single_huge_identity_among_small_ones() -> None:
    pids = _pids([2000] + [4] * 10)
    sampler = PKSampler(pids, batch_size=16, num_instances=4, seed=1)
    batches = _batches(sampler)
    # Ten small ids with one chunk each, P=4: the huge id can join at most one batch per step and
    # sampling stops once fewer than P identities have chunks left.
    assert 2 <= len(batches) <= 3
    for batch in batches:
        assert len(set(pids[batch].tolist())) == 4
    assert (pids[batches] == 1).reshape(len(batches), -1).sum(axis=1).max() <= 4


def test_dataset_with_a_single_identity_and_p_equal_one() -> None:
    pids = np.zeros(103, dtype=np.int64)
    sampler = PKSampler(pids, batch_size=4, num_instances=4, seed=0)
    batches = _batches(sampler)
    assert len(batches) == 103 // 4
    assert np.unique(batches).size == batches.size


def test_every_epoch_is_a_new_permutation(mixed_pids: np.ndarray) -> None:
    sampler = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=5)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    for a in range(4):
        for b in range(a + 1, 4):
            assert orders[a] != orders[b]


def test_same_seed_and_epoch_reproduce_and_seeds_differ(mixed_pids: np.ndarray) -> None:
    first = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=11)
    first.set_epoch(6)
    # A fresh sampler jumping straight to epoch 6 (a resumed run) replays the same order.
    resumed = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=11)
    resumed.set_epoch(0)
    list(resumed)
    resumed.set_epoch(6)
    assert list(first) == list(resumed)
    other_seed = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=12)
    other_seed.set_epoch(6)
    assert list(first) != list(other_seed)


def test_labels_need_not_be_contiguous(mixed_pids: np.ndarray) -> None:
    relabelled = mixed_pids * 37 - 5
    a = PKSampler(mixed_pids, batch_size=16, num_instances=4, seed=2)
    b = PKSampler(relabelled, batch_size=16, num_instances=4, seed=2)
    assert list(a) == list(b)


def test_len_equals_iterated_length_for_every_epoch(mixed_pids: np.ndarray) -> None:
    sampler = PKSampler(mixed_pids, batch_size=24, num_instances=4, seed=0)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        n = len(sampler)
        assert n == len(list(sampler))
        assert n % 24 == 0 and n > 0


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_ranks_split_each_global_batch(mixed_pids: np.ndarray, world_size: int) -> None:
    batch_size, k = 12, 4
    epoch = 3
    ranks = [PKSampler(mixed_pids, batch_size, k, seed=9, rank=r, world_size=world_size) for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [_batches(sampler) for sampler in ranks]

    lengths = {len(sampler) for sampler in ranks}
    assert len(lengths) == 1, "every rank must run the same number of steps"
    assert {len(b) for b in per_rank} == {lengths.pop() // batch_size}

    # Reference: one process drawing the whole global batch (batch_size * world_size).
    single = PKSampler(mixed_pids, batch_size * world_size, k, seed=9)
    single.set_epoch(epoch)
    reference = _batches(single)
    assert len(reference) == len(per_rank[0])

    for step in range(len(reference)):
        step_batches = [per_rank[r][step] for r in range(world_size)]
        id_sets = [set(mixed_pids[b].tolist()) for b in step_batches]
        assert all(len(ids) == batch_size // k for ids in id_sets)
        assert len(set().union(*id_sets)) == sum(len(ids) for ids in id_sets), "ranks share an identity"
        # Definition: rank r holds identities r*P..(r+1)*P-1 of the global batch, in order.
        np.testing.assert_array_equal(np.concatenate(step_batches), reference[step])


def test_distributed_epochs_differ() -> None:
    pids = _pids([8] * 40)
    sampler = PKSampler(pids, batch_size=8, num_instances=4, seed=0, rank=1, world_size=2)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0  # TAO bug B5: identical batches every epoch


def test_works_with_a_dataloader() -> None:
    pids = _pids([6] * 10)
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(pids))
    sampler = PKSampler(pids, batch_size=8, num_instances=2, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, drop_last=True)
    batches = [b[0] for b in loader]
    assert len(batches) == len(loader) == len(sampler) // 8
    for batch in batches:
        assert torch.unique(batch).numel() == 4


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"batch_size": 10, "num_instances": 4}, "batch_size"),
        ({"batch_size": 0, "num_instances": 4}, "batch_size"),
        ({"batch_size": 8, "num_instances": 0}, "num_instances"),
        ({"batch_size": 8, "num_instances": 4, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 16, "num_instances": 4}, "pids"),  # 3 ids < P=4
        ({"batch_size": 8, "num_instances": 4, "world_size": 2}, "world_size"),  # 3 ids < 2*2
    ],
)
def test_invalid_arguments_raise_value_errors(kwargs: dict, named: str) -> None:
    pids = _pids([5, 5, 5])
    with pytest.raises(ValueError, match=named):
        PKSampler(pids, **kwargs)


def test_market_sized_epoch_runs_quickly() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 33, size=751)
    pids = _pids(counts.tolist())
    sampler = PKSampler(pids, batch_size=64, num_instances=4, seed=0)
    start = time.perf_counter()
    sampler.set_epoch(1)
    batches = _batches(sampler)  # the whole epoch, as the loader draws it
    elapsed = time.perf_counter() - start
    # every step is 16 distinct identities x 4 distinct images, and the epoch uses nearly every chunk of 4
    chunks = int((np.maximum(counts, 4) // 4).sum())
    assert batches.shape[1] == 64 and batches.shape[0] * 64 == len(sampler)
    assert chunks // 16 - 20 <= batches.shape[0] <= chunks // 16
    for batch in batches:
        ids, per_id = np.unique(pids[batch], return_counts=True)
        assert ids.size == 16 and (per_id == 4).all()
        large = counts[pids[batch] - 1] >= 4  # identities with 4+ images give 4 distinct ones
        assert np.unique(batch[large]).size == large.sum()
    # speed is a benchmark's job, not a timed test's: report it only
    print(f"Market-sized plan ({pids.size} images, 751 ids): {elapsed * 1000:.1f} ms")


def test_global_batches_match_the_ranks(mixed_pids: np.ndarray) -> None:
    rank1 = PKSampler(mixed_pids, batch_size=8, num_instances=4, seed=4, rank=1, world_size=2)
    rank1.set_epoch(2)
    plan = rank1.global_batches()
    assert plan.shape[1:] == (4, 4)
    np.testing.assert_array_equal(plan[:, 2:, :].reshape(-1), np.fromiter(iter(rank1), dtype=np.int64))
    assert not np.array_equal(rank1.global_batches(epoch=3)[:1], plan[:1])


def test_every_epoch_has_the_same_length() -> None:
    # Lightning measures the loader length once; a varying epoch length would cut or pad epochs.
    rng = np.random.default_rng(0)
    pids = _pids(rng.integers(1, 30, size=60).tolist())
    sampler = PKSampler(pids, batch_size=16, num_instances=4, seed=3)
    lengths = set()
    for epoch in range(25):
        sampler.set_epoch(epoch)
        lengths.add((len(sampler), len(list(sampler))))
    assert len(lengths) == 1
    ((declared, iterated),) = lengths
    assert declared == iterated and declared % 16 == 0
