"""Loading a torch.save file without running code from it (imports only ``errors``).

:func:`safe_torch_load` is the one place torch.load is called: ``weights_only=True`` with an allow-list of the
plain-data types real Lightning/TAO/timm/torchvision files hold, and full unpickling (which runs code from the
file) only on explicit request. Every weights or checkpoint file is read through
:func:`reid_tao.io.checkpoint_file.read_checkpoint_file`, which calls it.

torch and omegaconf are imported inside the helpers that need them, so importing this module is cheap.
"""

from __future__ import annotations

import os
from typing import Any

from reid_tao.errors import DataError

__all__ = ["TRUST_FIELD", "safe_torch_load"]

TRUST_FIELD = "model.trust_weights_file"


def _safe_globals() -> list:
    """Plain-data types that real checkpoints hold besides tensors, allowed on top of torch's own list:
    OmegaConf configs saved by Lightning's ``save_hyperparameters`` (containers, their metadata and value
    nodes, the typing annotations in that metadata), argparse Namespaces (older Lightning hparams), Python
    containers (``collections.Counter``: torch's MultiStepLR state) and pathlib paths. Constructing any of
    them runs only their library's code, never the file's."""
    import argparse
    import collections
    import pathlib
    import typing

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
        nodes.BytesNode,
        nodes.PathNode,
        typing.Any,
        list,
        dict,
        tuple,
        dict,
        list,
        tuple,
        set,
        frozenset,
        int,
        float,
        str,
        bool,
        bytes,
        complex,
        collections.OrderedDict,
        collections.defaultdict,
        collections.Counter,
        pathlib.Path,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        argparse.Namespace,
    ]


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '_name', ''))}"


def safe_torch_load(path: str | os.PathLike, field: str, trust: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load(path)`` without running code from the file (``weights_only=True`` + :func:`_safe_globals`).

    A file that needs anything else raises one DataError line naming ``field``, the file, the types it needs
    and the opt-in; ``trust=True`` (:data:`TRUST_FIELD`) loads it with full unpickling instead, which runs
    whatever code the file carries. Other load failures (missing, corrupt) propagate unchanged.
    """
    import pickle

    import torch

    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    allowed = _safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(path, {_qualified(obj) for obj in allowed})
        if needed is None and not _looks_like_torch_file(path):  # JSON, text: no opt-in would help
            raise DataError(
                f"{field}: {path} is not a PyTorch checkpoint (neither a torch.save zip file nor a "
                "pickle); pass the .pth file that `reid train` or TAO wrote"
            ) from None
        if needed is None and "Weights only load failed" not in str(error):
            raise
        shown = ", ".join(needed[:3]) + (", ..." if len(needed) > 3 else "") if needed else "unknown objects"
        raise DataError(
            f"{field}: {path} holds Python objects that only full unpickling can load ({shown}), "
            f"which runs code from the file; not loaded. Only for a file you trust, set "
            f"{TRUST_FIELD}=true"
        ) from None


def _looks_like_torch_file(path: str | os.PathLike) -> bool:
    """torch.save writes a zip file (new format) or a pickle (legacy format, first byte 0x80 = PROTO)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # let the load's own error speak
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _unsafe_globals(path: str | os.PathLike, allowed: set) -> list | None:
    """The classes/functions the file's pickle names beyond ``allowed``, read without unpickling (None when
    the file cannot be scanned, e.g. a legacy non-zip file)."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return None
    return sorted(name for name in names if name not in allowed) or None
