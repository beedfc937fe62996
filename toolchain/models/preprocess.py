"""Pixel preprocessing shared by training and the exported graph: centre square crop, resize, normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_frames(frames: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 [B,K,H,W,3] -> float32 [B,K,3,size,size].

    Crops the centred square of side min(H, W) and resizes it bilinearly (the same geometry as
    "resize shortest side, centre crop"), then scales to [0, 1] and normalises with mean/std.
    """
    b, k, h, w, _ = frames.shape
    # The TorchScript tracer sees shapes as 0-d tensors (sym_min rejects them); torch.export as SymInts.
    side = torch.minimum(h, w) if torch.jit.is_tracing() else torch.sym_min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = frames.reshape(b * k, h, w, 3).permute(0, 3, 1, 2).to(torch.float32)
    x = x[:, :, top : top + side, left : left + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).reshape(b, k, 3, size, size)
