"""The modules that become ONNX graphs: raw uint8 frames -> embeddings, token ids -> embeddings, and
for X-CLIP the scorer that conditions each caption on each video (its prompt generator)."""

from __future__ import annotations

import torch
from torch import nn

from toolchain.models import xclip_scoring
from toolchain.models.video_clip import VideoCLIP


class VideoEncoderGraph(nn.Module):
    """frames uint8 [B,N,H,W,3] -> (video_embeds float [B,D] L2-normalised, frame_indices int64 [B,K]),
    plus video_context float [B,P,D] (the prompt generator's visual input) for X-CLIP."""

    def __init__(self, model: VideoCLIP):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor):
        if self.model.conditioned:
            return self.model.encode_frames_parts(frames)
        return self.model.encode_frames(frames)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask int64 [B,L] -> text_embeds float [B,D] L2-normalised, plus for X-CLIP
    text_features float [B,D] (projected, not normalised: what the scorer conditions)."""

    def __init__(self, model: VideoCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if self.model.conditioned:
            features = self.model.encode_text_features(input_ids, attention_mask)
            return torch.nn.functional.normalize(features, dim=-1), features
        return self.model.encode_text(input_ids, attention_mask)


class ScorerGraph(nn.Module):
    """X-CLIP's score: video_embeds [V,D], video_context [V,P,D], text_features [T,D] -> scores [V,T]
    (cosine of each video with each caption conditioned on that video; what XCLIPModel.forward's
    logits_per_video are before the logit scale)."""

    def __init__(self, model: VideoCLIP):
        super().__init__()
        self.model = model

    def forward(self, video_embeds: torch.Tensor, video_context: torch.Tensor, text_features: torch.Tensor):
        return xclip_scoring.conditioned_scores(self.model.clip, video_embeds, video_context, text_features)
