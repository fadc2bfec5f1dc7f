"""What every benchmark mode shares: the JSON line, timing, memory, the device and the CPU it ran on.

Only the standard library at import time: ``benchmark.py --help`` must not wait for torch."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    import torch

MARKET_IDS = 751
MARKET_CAMS = 6
CPU_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products: what makes INT8 fast on a CPU


def print_json_line(report: dict[str, Any]) -> None:
    """A mode's report as the one JSON line on stdout."""
    print(json.dumps(report), flush=True)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def rss_mb() -> float:
    """Resident memory now (Linux; 0 elsewhere)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    return 0.0


def best_time(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs of ``fn`` (CUDA synchronised around each), and its last result."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # free the previous result first: it would inflate the peak memory
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def warm_up(device: str, fn: Callable[[], Any]) -> None:
    """On CUDA, one untimed run first: context creation and kernel loading are not what we measure."""
    if device.startswith("cuda"):
        fn()


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chosen_device(name: str) -> torch.device:
    """--device as a torch.device with its index, so synchronize and peak memory read the GPU in use."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def free_device_memory(device: torch.device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_model() -> str:
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and which of the INT8-relevant instruction sets /proc/cpuinfo lists."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"cpu": "unknown (no /proc/cpuinfo)"}
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {
        "cpu": names[0] if names else "unknown",
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "int8_flags": sorted(flags & set(CPU_INT8_FLAGS)),
    }
