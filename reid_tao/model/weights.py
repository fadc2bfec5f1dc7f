"""Pretrained backbone weights: read local files, match them to a backbone, fetch ImageNet weights.

Accepted layouts: torchvision ResNet (``conv1.weight``, ``layer1.0...``), timm Swin, the official
Microsoft Swin release (converted and window-interpolated by timm's ``checkpoint_filter_fn``), and any of
them nested under a prefix such as ``backbone.``, ``base.``, ``model.`` or ``module.`` (re-ID checkpoints,
Lightning checkpoints). Unlike TAO (bug B14) every load reports how many backbone tensors it filled, and
fails loudly when most of them did not match.
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reid_tao.errors import DataError, first_line
from reid_tao.io.checkpoint_file import flatten_state_dict, read_checkpoint_file

logger = logging.getLogger(__name__)

PATH_FIELD = "model.pretrained_model_path"
# Classifier tensors of the source network: never part of a backbone, so neither loaded nor "unexpected".
HEAD_NAMES = ("fc", "head", "classifier")
MAX_PREFIX_DEPTH = 4
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass
class LoadReport:
    """What a weight load did, counted over the backbone's tensors (BatchNorm step counters excluded)."""

    matched: int
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]
    total: int
    ignored: int = 0  # head/classifier tensors and tensors outside the backbone's prefix
    source_prefix: str = field(default="")

    @property
    def fraction(self) -> float:
        return self.matched / self.total if self.total else 0.0

    def summary(self) -> str:
        """One line, e.g. "loaded 318/320 backbone tensors (99.4%), 2 missing, 0 unexpected, ..."."""
        text = (
            f"loaded {self.matched}/{self.total} backbone tensors ({100 * self.fraction:.1f}%), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} shape mismatches, {self.ignored} head/other tensors ignored"
        )
        if self.source_prefix:
            text += f" (file prefix {self.source_prefix!r} stripped)"
        return text


# ----------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file (.pth/.pt/.pth.tar/.ckpt, .safetensors) into a flat tensor dict.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state": ...}`` (also nested, as in
    Lightning checkpoints) and strips leading ``module.`` (DataParallel) prefixes. Never runs code from the
    file unless ``trust`` (see :func:`reid_tao.io.checkpoint_file.read_checkpoint_file`, which reads it).
    """
    return read_checkpoint_file(path, PATH_FIELD, trust=trust, weights=True).tensors


# ----------------------------------------------------------------------------------------------- matching
def load_backbone_weights(
    backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], min_fraction: float = 0.9
) -> LoadReport:
    """Copy the matching tensors of ``state_dict`` into ``backbone`` and report what matched.

    The file's key prefix is found automatically; Swin checkpoints go through timm's converter (official
    Microsoft layout, relative-position tables interpolated to this backbone's windows). Head/classifier
    tensors are ignored. Raises DataError, leaving the backbone untouched, when fewer than
    ``min_fraction`` of the backbone's tensors would load.
    """
    source = flatten_state_dict(state_dict)
    target = backbone.state_dict()
    swin_prefix, swin = _find_timm_swin(backbone)
    if swin is not None and any(name.endswith("patch_embed.projection.weight") for name in source):
        source = _mmcv_swin_to_microsoft(source)
    own_names = {name[len(swin_prefix) :] for name in target if name.startswith(swin_prefix)}

    prefix = _best_prefix(source, own_names)
    relative = {name[len(prefix) :]: value for name, value in source.items() if name.startswith(prefix)}
    ignored = len(source) - len(relative)
    heads = [name for name in relative if name.split(".", 1)[0] in HEAD_NAMES and name not in own_names]
    for name in heads:
        del relative[name]
    ignored += len(heads)
    if swin is not None:
        relative = _convert_swin(relative, swin)
    candidate = {swin_prefix + name: value for name, value in relative.items()}

    counted = [name for name in target if not name.endswith("num_batches_tracked")]
    loadable = {
        name: value for name, value in candidate.items() if name in target and value.shape == target[name].shape
    }
    report = LoadReport(
        matched=sum(name in loadable for name in counted),
        missing=[name for name in counted if name not in candidate],
        unexpected=sorted(
            name for name in candidate if name not in target and not name.endswith("num_batches_tracked")
        ),
        shape_mismatch=[
            f"{name}: file {tuple(candidate[name].shape)} vs model {tuple(target[name].shape)}"
            for name in counted
            if name in candidate and name not in loadable
        ],
        total=len(counted),
        ignored=ignored,
        source_prefix=prefix,
    )
    if report.fraction < min_fraction:
        raise DataError(_too_few_message(report, min_fraction, source))
    backbone.load_state_dict(loadable, strict=False)
    logger.info("pretrained backbone weights: %s", report.summary())
    if report.missing or report.shape_mismatch or report.unexpected:
        logger.warning(
            "pretrained weights: not loaded %s; unused from the file %s",
            ", ".join((report.missing + report.shape_mismatch)[:5]) or "-",
            ", ".join(report.unexpected[:5]) or "-",
        )
    return report


def _find_timm_swin(backbone: nn.Module) -> tuple[str, nn.Module | None]:
    """The timm SwinTransformer inside ``backbone`` and its key prefix, or ("", None)."""
    from timm.models.swin_transformer import SwinTransformer

    for name, module in backbone.named_modules():
        if isinstance(module, SwinTransformer):
            return (f"{name}." if name else ""), module
    return "", None


def _best_prefix(source: Mapping[str, torch.Tensor], own_names: set[str]) -> str:
    """The leading ``a.b.`` of the file's keys whose removal names the most of the backbone's tensors."""
    votes: Counter[str] = Counter()
    for name in source:
        parts = name.split(".")
        for depth in range(min(len(parts) - 1, MAX_PREFIX_DEPTH) + 1):
            if ".".join(parts[depth:]) in own_names:
                votes[".".join(parts[:depth]) + "." if depth else ""] += 1
    if not votes:
        return ""
    return max(votes, key=lambda prefix: (votes[prefix], -len(prefix)))


def _mmcv_swin_to_microsoft(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mmcv/SOLIDER Swin layout (TAO's Swin: ``stages.*``, ``attn.w_msa``, ``ffn.layers``, unfold-ordered
    patch merging, final ``norm3``) back to the official Microsoft layout, which timm's filter then reads.
    Keys keep their prefix (``model.base.`` etc.); SOLIDER's semantic embeddings have no counterpart."""
    renames = (
        (".attn.w_msa.", ".attn."),
        (".ffn.layers.0.0.", ".mlp.fc1."),
        (".ffn.layers.1.", ".mlp.fc2."),
        ("patch_embed.projection.", "patch_embed.proj."),
    )
    converted = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        if "stages" in parts:
            parts[parts.index("stages")] = "layers"
        if parts[-2:-1] == ["norm3"]:
            parts[-2] = "norm"  # the last stage's output norm is the final norm
        name = ".".join(parts)
        for old, new in renames:
            name = name.replace(old, new)
        if ".downsample.reduction." in name and value.ndim == 2:  # mmcv's nn.Unfold order -> (x0, x1, x2, x3)
            out_ch, in_ch = value.shape
            value = value.reshape(out_ch, in_ch // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]].reshape(out_ch, in_ch)
        elif ".downsample.norm." in name and value.ndim == 1:
            value = value.reshape(-1, 4).transpose(0, 1)[[0, 2, 1, 3]].reshape(-1)
        converted[name] = value
    return converted


def _convert_swin(state_dict: dict[str, torch.Tensor], swin: nn.Module) -> dict[str, torch.Tensor]:
    """timm's Swin filter: Microsoft -> timm names, relative-position tables resized to our windows."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    own = swin.state_dict()
    # The filter looks every table's block up in the model and resizes it; tables of blocks we lack or with
    # another head count cannot be resized, so they skip it and show up as unexpected/mismatched.
    passthrough = {}
    for name, value in list(state_dict.items()):
        if name.endswith("relative_position_bias_table") and (
            name not in own or value.ndim != 2 or value.shape[1] != own[name].shape[1]
        ):
            passthrough[name] = state_dict.pop(name)
    with warnings.catch_warnings():  # timm's table interpolation emits torch indexing/perf warnings
        warnings.simplefilter("ignore", UserWarning)
        converted = checkpoint_filter_fn(state_dict, swin)
    converted.update(passthrough)
    return converted


def _too_few_message(report: LoadReport, min_fraction: float, source: Mapping[str, torch.Tensor]) -> str:
    missing = ", ".join(report.missing[:3]) or "-"
    mismatched = "; ".join(report.shape_mismatch[:2])
    file_keys = ", ".join(list(source)[:3]) or "none"
    text = (
        f"{PATH_FIELD}: only {report.matched}/{report.total} backbone tensors "
        f"({100 * report.fraction:.1f}%, need {100 * min_fraction:.0f}%) match this backbone; "
        f"e.g. missing {missing}"
    )
    if mismatched:
        text += f"; shape mismatches {mismatched}"
    return text + (
        f"; the file's keys look like {file_keys}. Check that the file belongs to the chosen "
        f"model.backbone (torchvision ResNet, timm or official Swin format)"
    )


# ----------------------------------------------------------------------------------------------- ImageNet
def load_imagenet_weights(backbone: nn.Module, backbone_name: str) -> LoadReport:
    """Download (or take from the local cache) the ImageNet weights of ``backbone_name`` and load them.

    ResNet: torchvision's IMAGENET1K_V1 weights (the ones BoT/TAO used). Swin: timm's default pretrained
    weights of that model (Hugging Face cache if already there, else the official Microsoft release URL,
    which fails fast when offline). Any download problem becomes one DataError telling the user to
    download the file elsewhere and set model.pretrained_model_path.
    """
    from reid_tao.model.backbones import BACKBONES

    if backbone_name not in BACKBONES:
        raise ValueError(f"backbone_name={backbone_name!r} is not in the backbone table")
    imagenet = BACKBONES[backbone_name].imagenet
    fetch, source = _IMAGENET_FETCHERS[imagenet.library](imagenet.name)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            state_dict = fetch()
    except Exception as error:  # offline, DNS, HTTP, proxy, corrupt cache: one actionable line
        raise DataError(
            f"could not download ImageNet weights for model.backbone={backbone_name} ({_short_reason(error)}): "
            f"download them ({source}) on a machine with internet and set "
            f"{PATH_FIELD}=/path/to/file (torchvision/timm/official format)"
        ) from None
    return load_backbone_weights(backbone, flatten_state_dict(state_dict))


def _torchvision_imagenet_fetcher(enum_name: str):
    from torchvision import models

    weights_enum = getattr(models, enum_name, None)
    if weights_enum is None:
        raise ValueError(f"torchvision has no weights enum {enum_name!r}")
    weights = weights_enum.IMAGENET1K_V1
    return (lambda: weights.get_state_dict(progress=True)), weights.url


def _timm_imagenet_fetcher(name: str):
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None or not (cfg.url or cfg.hf_hub_id):
        raise DataError(
            f"model.backbone={name}: timm knows no ImageNet weights for it; "
            f"set model.pretrain_choice='' or {PATH_FIELD}"
        )
    hf_repo = cfg.hf_hub_id  # e.g. timm/swin_tiny_patch4_window7_224.ms_in1k

    def fetch():
        cached = _hf_cached_file(hf_repo) if cfg.hf_hub_id else None
        if cached is not None:
            return read_state_dict(cached)
        if not cfg.url:
            from timm.models import load_state_dict_from_hf

            return load_state_dict_from_hf(hf_repo, weights_only=True)
        return torch.hub.load_state_dict_from_url(cfg.url, map_location="cpu", progress=True, weights_only=True)

    return fetch, cfg.url or f"https://huggingface.co/{hf_repo}"


_IMAGENET_FETCHERS = {"torchvision": _torchvision_imagenet_fetcher, "timm": _timm_imagenet_fetcher}


def _hf_cached_file(repo_id: str) -> str | None:
    """A weights file of ``repo_id`` already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


@contextmanager
def _socket_timeout(seconds: float):
    """Bound urllib downloads (torch.hub) that would otherwise wait forever on a dead network."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else previous)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(error: BaseException) -> str:
    text = first_line(str(error))
    return first_line(f"{type(error).__name__}: {text}" if text else type(error).__name__, limit=160)
