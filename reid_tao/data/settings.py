"""The data module's training settings, grouped (plain frozen dataclasses; reid_tao.builders fills them from a spec).

The image preprocessing is :class:`reid_tao.data.preprocessing.Preprocessing`.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation: horizontal flip, zero pad + random crop, random erasing."""

    flip_prob: float = 0.5
    padding: int = 10
    erase_prob: float = 0.5


@dataclass(frozen=True)
class LoaderSettings:
    """Batching. pk_batches: PK batches of ``batch_size // num_instances`` identities x ``num_instances``
    images (what the triplet loss needs), else shuffled batches. seed: sampling and augmentation seed.
    camera_balanced: an identity's K images in a PK batch come from as many of its cameras as it has."""

    batch_size: int = 64
    val_batch_size: int = 128
    num_workers: int = 8
    pk_batches: bool = True
    num_instances: int = 4
    seed: int = 0
    camera_balanced: bool = False
