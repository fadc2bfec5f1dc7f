"""Counting host-device syncs: a torch dispatch mode that sees every aten op, so it catches the reads that
patching Tensor.item misses (boolean-mask indexing calls nonzero, `if tensor:` calls is_nonzero, int(t) and
float(t) call _local_scalar_dense).

On the CPU these ops cost nothing, but on a GPU each one waits for the device; counting them over real
training steps on the CPU tells how often a GPU run would stall."""

import os
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# ops whose result size or value must be known on the host, so the device has to finish first
SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.allclose.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.repeat_interleave.Tensor,
}
# torch.optim keeps Adam's step count as a host tensor and reads it there: not a device read
_HOST_SIDE = (f"{os.sep}torch{os.sep}optim{os.sep}",)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...``; ``syncs.total``, ``syncs.ops`` (op name -> count) and
    ``syncs.sources`` (the innermost reid_tao file on the stack, e.g. "engine/preemption.py" -> count)."""

    def __init__(self):
        super().__init__()
        self.ops, self.sources = Counter(), Counter()

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = None
        if func in SYNC_OPS:
            name = func.overloadpacket.__name__
        elif func in _INDEXING and _has_bool_index(args):
            name = f"{func.overloadpacket.__name__}(boolean mask)"  # calls nonzero inside the kernel
        if name is not None and not _called_from_host_side():
            self.ops[name] += 1
            self.sources[_reid_tao_source()] += 1
        return func(*args, **(kwargs or {}))


_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _called_from_host_side() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _HOST_SIDE):
            return True
        frame = frame.f_back
    return False


def _reid_tao_source() -> str:
    marker = f"{os.sep}reid_tao{os.sep}"
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if marker in name:
            return name.rsplit(marker, 1)[1].replace(os.sep, "/")
        frame = frame.f_back
    return "elsewhere"
