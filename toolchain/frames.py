"""Frame selection: pick K of N uint8 frames with integer arithmetic, identically in training and in ONNX."""

from __future__ import annotations

import torch

from toolchain.errors import DataError

SELECTORS = ("uniform",)


def uniform_indices(n: torch.Tensor | int, k: int) -> torch.Tensor:
    """Segment centres (TSN-style): index i = (2i+1)·N // 2K, int64, sorted; repeats frames when N < K.

    Pure integer arithmetic, so PyTorch and every ONNX Runtime provider compute the same indices.
    """
    # n stays a (Sym)Int: turning it into a tensor would freeze the exported graph's frame count.
    steps = torch.arange(k, dtype=torch.int64) * 2 + 1
    return torch.div(steps * n, 2 * k, rounding_mode="floor")


def select_frames(frames: torch.Tensor, k: int, selector: str = "uniform") -> torch.Tensor:
    """Indices of the K frames to keep: [N,H,W,3] -> [K] or [B,N,H,W,3] -> [B,K] (int64, sorted)."""
    if frames.dtype != torch.uint8:
        raise DataError(f"select_frames expects uint8 frames, got {frames.dtype}")
    if selector not in SELECTORS:
        raise DataError(f"unknown frame selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    batched = frames.dim() == 5
    n = frames.shape[1] if batched else frames.shape[0]
    if isinstance(n, int) and n == 0:  # a SymInt while exporting: the graph's N is left dynamic
        raise DataError("cannot select frames from a clip with 0 frames")
    idx = uniform_indices(n, k)
    return idx.unsqueeze(0).expand(frames.shape[0], k) if batched else idx


def gather_frames(frames: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """frames [B,N,H,W,3] and indices [B,K] -> [B,K,H,W,3]."""
    b = torch.arange(frames.shape[0], dtype=torch.int64).unsqueeze(1)
    return frames[b, indices]
