"""Pixel preprocessing shared by training and the exported graph, with the checkpoint's own constants.

Hugging Face's CLIP-style processors resize the shortest side to `resize_shortest`, centre-crop
`size` x `size`, rescale by 1/255 and normalise with mean/std. Here the same geometry is one step on
the raw frame: crop the centred square that the processor's crop covers (side
min(H, W) * size / resize_shortest) and resize it bilinearly to size x size. Processors without a
crop (ViT: resize to exactly size x size) are `resize_shortest=0`: the whole frame is resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def crop_box(h, w, size: int, resize_shortest: int | None):
    """(top, left, height, width) of the region that becomes the size x size input."""
    if resize_shortest == 0:
        return 0, 0, h, w
    side = torch.sym_min(h, w)
    if resize_shortest is not None and resize_shortest != size:
        side = side * size // resize_shortest  # integer arithmetic: stays symbolic in the export
    return (h - side) // 2, (w - side) // 2, side, side


def preprocess_frames(frames: torch.Tensor, size: int, mean, std, resize_shortest: int | None = None,
                      rescale: float = 1 / 255) -> torch.Tensor:
    """uint8 [B,K,H,W,3] -> float32 [B,K,3,size,size]: crop (see the module doc), bilinear resize,
    rescale, normalise."""
    b, k, h, w, _ = frames.shape
    top, left, ch, cw = crop_box(h, w, size, resize_shortest)
    x = frames.reshape(b * k, h, w, 3).permute(0, 3, 1, 2).to(torch.float32)
    x = x[:, :, top : top + ch, left : left + cw]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x / 255.0 if rescale == 1 / 255 else x * rescale
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).reshape(b, k, 3, size, size)
