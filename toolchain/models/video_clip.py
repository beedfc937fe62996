"""CLIP-family video-text model: uint8 frames -> selector -> preprocessing -> frame encoder -> mean pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.adapters.temporal import TemporalContext, bind_temporal
from toolchain.frames import MOTION_SCALE, check_frames, gather_frames, motion_energy, select_indices
from toolchain.models.preprocess import preprocess_frames


class VideoCLIP(nn.Module):
    """Wraps a (possibly PEFT-wrapped, possibly 4-bit) `CLIPModel`; pooling is CLIP4Clip's meanP."""

    def __init__(self, clip: nn.Module, k: int, selector: str, image_size: int, mean, std):
        super().__init__()
        self.clip = clip
        self.k, self.selector, self.image_size = k, selector, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.temporal = TemporalContext()  # read by temporal LoRA layers, if any
        bind_temporal(clip, self.temporal)

    def prepare_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 [B,N,H,W,3] -> (pixels float [B,K,3,S,S], indices int64 [B,K], motion float [B,K] in [0,1])."""
        check_frames(frames)
        energy = motion_energy(frames)  # one integer score per frame: selects frames, feeds the gate
        idx = select_indices(energy, self.k, self.selector)
        pixels = preprocess_frames(gather_frames(frames, idx), self.image_size, self.mean, self.std)
        motion = gather_frames(energy, idx).to(torch.float32) / MOTION_SCALE
        return pixels, idx, motion

    def encode_pixels(self, pixels: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        b, k = pixels.shape[:2]
        flat = pixels.reshape(b * k, *pixels.shape[2:])
        self.temporal.k, self.temporal.motion, self.temporal.active = k, motion, True
        try:
            feats = self.clip.get_image_features(pixel_values=flat).pooler_output
        finally:
            self.temporal.active, self.temporal.motion = False, None
        return F.normalize(feats.float().reshape(b, k, -1).mean(dim=1), dim=-1)

    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, idx, motion = self.prepare_frames(frames)
        return self.encode_pixels(pixels, motion), idx

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.pooler_output.float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().float().exp().clamp(max=100.0)
