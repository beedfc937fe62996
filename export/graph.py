"""The modules that become ONNX graphs: raw uint8 frames -> embeddings, token ids -> embeddings."""

from __future__ import annotations

import torch
from torch import nn

from toolchain.models.video_clip import VideoCLIP


class VideoEncoderGraph(nn.Module):
    """frames uint8 [B,N,H,W,3] -> (video_embeds float [B,D] L2-normalised, frame_indices int64 [B,K])."""

    def __init__(self, model: VideoCLIP):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor):
        return self.model.encode_frames(frames)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask int64 [B,L] -> text_embeds float [B,D] L2-normalised."""

    def __init__(self, model: VideoCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model.encode_text(input_ids, attention_mask)
