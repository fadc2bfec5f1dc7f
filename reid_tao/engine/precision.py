"""Numeric precision of a run: what train.precision=auto (and evaluation) resolve to on a device."""

import torch

PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")

# bf16 tensor cores arrived with Ampere (sm_80). torch.cuda.is_bf16_supported() also says yes on older
# GPUs (V100, T4) where bf16 is emulated and slower than fp16, so ask for the capability instead.
BF16_MIN_CAPABILITY = (8, 0)


def precision_for(requested: str, accelerator: str, device_index: int | None = None) -> str:
    """``auto``: bf16-mixed on a GPU with native bf16 (compute capability >= 8.0), 16-mixed on an older
    GPU, 32 on the CPU; anything else is returned as is. ``device_index`` is the CUDA device the run
    uses (the first of gpu_ids), not whichever device happens to be current."""
    if requested not in PRECISIONS:
        raise ValueError(f"requested={requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if accelerator != "gpu" or not torch.cuda.is_available():
        return "32"
    index = 0 if device_index is None else int(device_index)
    return "bf16-mixed" if torch.cuda.get_device_capability(index) >= BF16_MIN_CAPABILITY else "16-mixed"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). There oneDNN's bf16 convolutions
    train faster than fp32 (docs/benchmarks.md#figures-from-earlier-sessions); elsewhere bf16 is emulated and
    slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent in some torch releases
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_for(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context a precision (as resolved by :func:`precision_for`, or "auto") computes in on
    ``device``: validation during training uses evaluate.precision through it, not the training autocast
    (bf16 features would make the logged mAP that picks best-k checkpoints differ from `reid evaluate`)."""
    accelerator = "gpu" if device.type == "cuda" else device.type
    resolved = precision_for(precision, accelerator, device.index if device.type == "cuda" else None)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(resolved)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
