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


MOTION_GRID = 16
LUMA_DROP_BITS = 2  # ignore the lowest bits, so codec noise of ±1 LSB barely moves the score


def coarse_luma(frames: torch.Tensor, grid: int = MOTION_GRID) -> torch.Tensor:
    """uint8 [B,N,H,W,3] -> int32 [B,N,grid,grid]: integer BT.601 luma on a fixed sample grid."""
    h, w = frames.shape[2], frames.shape[3]
    rows = uniform_indices(h, grid)
    cols = uniform_indices(w, grid)
    px = frames[:, :, rows][:, :, :, cols].to(torch.int32)
    luma = (px[..., 0] * 77 + px[..., 1] * 150 + px[..., 2] * 29) // 256
    return luma // (1 << LUMA_DROP_BITS)


def motion_energy(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B,N,H,W,3] -> int32 [B,N]: summed |luma - previous frame's luma| on the coarse grid.

    The first frame has no predecessor and scores 0. Integer arithmetic only.
    """
    luma = coarse_luma(frames)
    diff = (luma[:, 1:] - luma[:, :-1]).abs().sum(dim=(2, 3))
    first = torch.zeros_like(luma[:, :1, 0, 0])  # also right for a 1-frame clip, where diff is empty
    return torch.cat([first, diff], dim=1)


MOTION_SCALE = float(MOTION_GRID * MOTION_GRID * (255 >> LUMA_DROP_BITS))


def gather_frames(frames: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """frames [B,N,...] and indices [B,K] -> [B,K,...]."""
    b = torch.arange(frames.shape[0], dtype=torch.int64).unsqueeze(1)
    return frames[b, indices]
