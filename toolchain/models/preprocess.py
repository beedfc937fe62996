"""Pixel preprocessing shared by training and the exported graph, with the checkpoint's own constants.

A checkpoint with a preprocessor_config.json gets its processor's geometry and filter: resize so the
shortest side is `resize_shortest` (the long side floor(long * resize_shortest / short), as Hugging
Face computes it), centre-crop size x size, rescale, normalise with its mean/std. The resize uses the
processor's filter (bilinear or bicubic) with antialiasing, as PIL does; `resize_shortest=0` (ViT-style
processors) resizes the whole frame to size x size. Integer shape arithmetic keeps H and W dynamic in
the exported graph.

The built-in base (no processor file, resize_shortest None) keeps the original geometry: crop the
centred square of side min(H, W), then resize it bilinearly without antialiasing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL filter ids used in preprocessor_config.json


def _shorter(h, w):
    # The TorchScript tracer sees shapes as 0-d tensors (sym_min rejects them); torch.export as SymInts.
    return torch.minimum(h, w) if torch.jit.is_tracing() else torch.sym_min(h, w)


def _square_crop_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[2], x.shape[3]
    side = _shorter(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top : top + side, left : left + side]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def _processor_resize(x: torch.Tensor, size: int, resize_shortest: int, resample: str) -> torch.Tensor:
    h, w = x.shape[2], x.shape[3]
    if resize_shortest == 0:
        out_h, out_w = size, size
    else:
        short = _shorter(h, w)
        out_h, out_w = h * resize_shortest // short, w * resize_shortest // short
    x = F.interpolate(x, size=(out_h, out_w), mode=resample, align_corners=False, antialias=True)
    if resample == "bicubic":
        x = x.clamp(0.0, 255.0)  # bicubic overshoots; PIL's result is a uint8 image
    top, left = (out_h - size) // 2, (out_w - size) // 2
    return x[:, :, top : top + size, left : left + size]


def resize_frames(frames: torch.Tensor, size: int, resize_shortest: int | None = None,
                  resample: str = "bicubic") -> torch.Tensor:
    """uint8 [B,K,H,W,3] -> float32 [B*K,3,size,size] in 0..255: the geometry half (crop and resize)."""
    b, k, h, w, _ = frames.shape
    x = frames.reshape(b * k, h, w, 3).permute(0, 3, 1, 2).to(torch.float32)
    if resize_shortest is None:
        return _square_crop_resize(x, size)
    return _processor_resize(x, size, resize_shortest, resample)


def normalize_pixels(x: torch.Tensor, mean, std, rescale: float = 1 / 255) -> torch.Tensor:
    """float [M,3,S,S] in 0..255 -> rescaled and normalised with the checkpoint's mean/std."""
    x = x / 255.0 if rescale == 1 / 255 else x * rescale
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def preprocess_frames(frames: torch.Tensor, size: int, mean, std, resize_shortest: int | None = None,
                      rescale: float = 1 / 255, resample: str = "bicubic") -> torch.Tensor:
    """uint8 [B,K,H,W,3] -> float32 [B,K,3,size,size] (see the module doc)."""
    b, k = frames.shape[:2]
    x = resize_frames(frames, size, resize_shortest, resample)
    return normalize_pixels(x, mean, std, rescale).reshape(b, k, 3, size, size)


def describe_preprocessing(info) -> dict:
    """The manifest's account of what the video graph does to the raw frames."""
    common = {"image_size": info.image_size, "mean": list(info.mean), "std": list(info.std),
              "scale": "1/255" if info.rescale == 1 / 255 else info.rescale}
    if info.resize_shortest is None:
        return {**common, "crop": "centre square of side min(H, W)", "resize": "bilinear"}
    if info.resize_shortest == 0:
        return {**common, "crop": "none", "resize": f"whole frame to {info.image_size}x{info.image_size}, "
                f"{info.resample}, antialiased"}
    return {**common, "resize": f"shortest side to {info.resize_shortest}, {info.resample}, antialiased",
            "crop": f"centre {info.image_size}x{info.image_size}", "source": "the checkpoint's preprocessor_config.json"}
