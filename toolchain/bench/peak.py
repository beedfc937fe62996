"""Peak memory of one phase of a process: CUDA allocator peak, or the Linux RSS high-water mark.

On CPU the kernel's VmHWM is the honest number (it counts what the process really touched: torch's
allocator, bitsandbytes' scratch buffers, library code), and writing "5" to /proc/self/clear_refs
resets it to the current RSS, so a phase (one training step, one fine-tune) is measured on its own
after model loading. Without that file (not Linux) the peak includes everything since start.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.heap import release_free_heap

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
MB = 1024 * 1024


def status_kb(field: str) -> int | None:
    """A `VmXXX:  123 kB` line of /proc/self/status, in kB; None where it does not exist."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak(device: str) -> bool:
    """Start a new high-water mark here; returns whether the reset really happened."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    release_free_heap()
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def current_mb(device: str) -> float | None:
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / MB
    kb = status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_mb(device: str) -> float | None:
    """Peak since the last reset: CUDA max_memory_allocated, or VmHWM (RSS high-water mark) on CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MB
    kb = status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 1024


def peak_kind(device: str, reset: bool) -> str:
    """What peak_mb means, in words, for reports."""
    if device == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak RSS (VmHWM)" + (" since reset" if reset else " since process start")
