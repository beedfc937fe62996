"""Frame selection: pick K of N uint8 frames with integer arithmetic, identically in training and in ONNX.

Every selector is a pure function of the frames and K, written once in torch: the training data
path, the PyTorch reference and the exported graph all call it, so the deployed model sees exactly
the frames it was trained and checked on. Integer arithmetic on a coarse luma grid with the low
bits dropped keeps the indices bit-identical across PyTorch and every ONNX Runtime provider, and
ties always go to the earliest frame.
"""

from __future__ import annotations

import torch

from toolchain.errors import DataError

SELECTORS = ("uniform", "motion", "motion-uniform")
MOTION_GRID = 16
LUMA_DROP_BITS = 2  # a ±1 LSB change of a pixel moves luma by at most 1: only a bucket edge can notice
MOTION_SCALE = float(MOTION_GRID * MOTION_GRID * (255 >> LUMA_DROP_BITS))


def uniform_indices(n: torch.Tensor | int, k: int) -> torch.Tensor:
    """Segment centres (TSN-style): index i = (2i+1)·N // 2K, int64, sorted; repeats frames when N < K."""
    # n stays a (Sym)Int: turning it into a tensor would freeze the exported graph's frame count.
    steps = torch.arange(k, dtype=torch.int64) * 2 + 1
    return torch.div(steps * n, 2 * k, rounding_mode="floor")


def coarse_luma(frames: torch.Tensor, grid: int = MOTION_GRID) -> torch.Tensor:
    """uint8 [B,N,H,W,3] -> int32 [B,N,grid,grid]: integer BT.601 luma on a fixed sample grid."""
    rows = uniform_indices(frames.shape[2], grid)
    cols = uniform_indices(frames.shape[3], grid)
    px = frames[:, :, rows][:, :, :, cols].to(torch.int32)
    luma = (px[..., 0] * 77 + px[..., 1] * 150 + px[..., 2] * 29) // 256
    return luma // (1 << LUMA_DROP_BITS)


def motion_energy(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B,N,H,W,3] -> int32 [B,N]: summed |luma − previous frame's luma| on the coarse grid.

    The first frame has no predecessor and scores 0.
    """
    luma = coarse_luma(frames)
    diff = (luma[:, 1:] - luma[:, :-1]).abs().sum(dim=(2, 3))
    first = torch.zeros_like(luma[:, :1, 0, 0])  # also right for a 1-frame clip, where diff is empty
    return torch.cat([first, diff], dim=1)


def motion_indices(energy: torch.Tensor, k: int) -> torch.Tensor:
    """Split N into K segments and take, in each, the frame of highest motion (earliest on ties).

    energy int32 [B,N] -> int64 [B,K]. An empty segment (N < K) falls back to the uniform index.
    """
    n = energy.shape[1]
    seg = torch.arange(k, dtype=torch.int64)
    starts = torch.div(seg * n, k, rounding_mode="floor")
    ends = torch.div((seg + 1) * n, k, rounding_mode="floor")
    pos = torch.arange(n, dtype=torch.int64)
    inside = (pos.unsqueeze(0) >= starts.unsqueeze(1)) & (pos.unsqueeze(0) < ends.unsqueeze(1))  # [K,N]
    scores = torch.where(inside.unsqueeze(0), energy.unsqueeze(1).to(torch.int64), torch.full_like(pos, -1))
    best = scores.argmax(dim=-1)  # first maximum: deterministic tie-breaking
    return torch.where((ends > starts).unsqueeze(0), best, uniform_indices(n, k).unsqueeze(0))


def strictly_increasing(idx: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
    """Push repeated indices forward so K ≤ N indices are unique, keeping order and range."""
    k = idx.shape[1]
    ramp = torch.arange(k, dtype=torch.int64)
    shifted = idx - ramp
    cols, running = [], shifted[:, 0]
    for i in range(k):  # K is small and static: an unrolled running max exports as plain Max ops
        running = torch.maximum(running, shifted[:, i])
        cols.append(running)
    out = torch.stack(cols, dim=1).clamp(min=0)
    return torch.minimum(out, n_frames - k) + ramp  # N − K: the last start that leaves room for the rest


def frame_count(energy: torch.Tensor) -> torch.Tensor:
    """N as an int64 scalar tensor, computed from data so the exported graph keeps N dynamic."""
    return torch.ones_like(energy[0], dtype=torch.int64).sum()


def motion_uniform_indices(energy: torch.Tensor, k: int) -> torch.Tensor:
    """K frames evenly spaced along the cumulative motion curve (MGSampler); integer arithmetic.

    Every frame counts 1 plus its motion, so a still clip gives the uniform choice. Repeats are
    pushed forward when N ≥ K; with fewer frames than K they are the contract.
    """
    n_frames = frame_count(energy)
    curve = torch.cumsum(energy.to(torch.int64) + 1, dim=1)  # [B,N], strictly increasing
    steps = torch.arange(k, dtype=torch.int64) * 2 + 1
    targets = torch.div(steps.unsqueeze(0) * curve[:, -1:], 2 * k, rounding_mode="floor")  # [B,K]
    idx = (curve.unsqueeze(1) <= targets.unsqueeze(2)).sum(dim=2)  # first frame whose curve passes it
    idx = torch.minimum(idx, n_frames - 1)
    return torch.where(n_frames >= k, strictly_increasing(idx, n_frames), idx)


def select_indices(energy: torch.Tensor, k: int, selector: str) -> torch.Tensor:
    """energy int32 [B,N] (from motion_energy) -> int64 [B,K], sorted."""
    if selector == "uniform":
        return uniform_indices(energy.shape[1], k).unsqueeze(0).expand(energy.shape[0], k)
    if selector == "motion":
        return motion_indices(energy, k)
    if selector == "motion-uniform":
        return motion_uniform_indices(energy, k)
    raise DataError(f"unknown frame selector {selector!r}; choose one of {', '.join(SELECTORS)}")


def check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8:
        raise DataError(f"select_frames expects uint8 frames, got {frames.dtype}")
    n = frames.shape[1]
    if isinstance(n, int) and n == 0:  # a SymInt while exporting: the graph's N is left dynamic
        raise DataError("cannot select frames from a clip with 0 frames")


def select_frames(frames: torch.Tensor, k: int, selector: str = "uniform") -> torch.Tensor:
    """Indices of the K frames to keep: [N,H,W,3] -> [K] or [B,N,H,W,3] -> [B,K] (int64, sorted)."""
    batched = frames.dim() == 5
    clips = frames if batched else frames.unsqueeze(0)
    check_frames(clips)
    idx = select_indices(motion_energy(clips), k, selector)
    return idx if batched else idx[0]


def gather_frames(frames: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """frames [B,N,...] and indices [B,K] -> [B,K,...]."""
    b = torch.arange(frames.shape[0], dtype=torch.int64).unsqueeze(1)
    return frames[b, indices]
