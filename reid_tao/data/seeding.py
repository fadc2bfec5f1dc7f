"""Derived seeds: every seed reid_tao computes from the spec's ``train.seed`` comes from here.

A derived seed is a function of the base seed and a few keys (epoch, process rank, batch seed, ...), made by
numpy's :class:`~numpy.random.SeedSequence`, whose hashing keeps nearby inputs (seed 1 epoch 2 and seed 2
epoch 1, rank 0 and rank 1) apart: no hand-made multiplier can make two key tuples collide by arithmetic.
"""

from collections.abc import Sequence

import numpy as np


def _entropy(keys: Sequence[int]) -> list:
    values = [int(key) for key in keys]
    if any(value < 0 for value in values):
        raise ValueError(f"seed keys must be >= 0, got {values}")
    return values


def derive_seeds(count: int, *keys: int, bits: int = 63) -> np.ndarray:
    """``count`` seeds in ``[0, 2**bits)`` from ``keys`` (uint64). The first n of them do not depend on
    ``count``, so a stream can be cut or resumed at any position."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    state = np.random.SeedSequence(_entropy(keys)).generate_state(int(count), np.uint64)
    return state >> np.uint64(64 - bits)


def derive_seed(*keys: int, bits: int = 63) -> int:
    """One seed in ``[0, 2**bits)`` from ``keys`` (e.g. base seed, epoch, rank): the same keys, the same seed.

    63 bits suit ``torch.manual_seed``/``torch.Generator``; ``bits=32`` suits ``lightning.seed_everything``."""
    return int(derive_seeds(1, *keys, bits=bits)[0])
