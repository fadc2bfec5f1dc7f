"""What the data loaders yield, by name instead of by position."""

from typing import Any, NamedTuple


class Batch(NamedTuple):
    """A batch of images with their identities, as the model sees it.

    images: float (B, 3, H, W); pids: int64 (B,), the training labels 0..N-1 for training batches and
    the dataset's person ids for evaluation batches; camids: int64 (B,); indices: int64 (B,), positions
    in the dataset (evaluation uses them to put the features back in dataset order).

    :class:`~reid_tao.data.datasets.ImageDataset` items are ``Batch`` es of one sample (a tensor image and
    Python ints); torch's ``default_collate`` stacks a NamedTuple field by field, so the loader yields a
    ``Batch`` of tensors.
    """

    images: Any
    pids: Any
    camids: Any
    indices: Any


class IndexBatch(NamedTuple):
    """A training batch of the device pipeline before its images exist: only dataset positions travel
    through the loader; :func:`~reid_tao.data.cached_pipeline.augment_batch` turns it into a :class:`Batch`.

    indices, pids, camids: int64 (B,); seed: the batch's augmentation seed, a Python int (no device sync
    to read it); host_indices: int64 numpy array, a host copy of ``indices`` that the transfer to the
    device leaves alone (a cache kept in host memory gathers with it instead of copying ``indices`` back).
    """

    indices: Any
    pids: Any
    camids: Any
    seed: int
    host_indices: Any = None
