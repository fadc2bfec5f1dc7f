"""Numeric precision of a run: what train.precision=auto (and evaluation) resolve to on a device."""
import torch

PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")


def precision_for(requested: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a GPU that supports it, 32 elsewhere; anything else is returned as is."""
    if requested not in PRECISIONS:
        raise ValueError(f"requested={requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32"
