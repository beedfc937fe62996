"""Video-text model over a CLIP-family base: uint8 frames -> selector -> preprocessing -> encoder -> pooling.

Families: `clip` and `dual-encoder` encode each frame with the image tower and pool over time
(mean, or a small temporal transformer); `xclip` takes the K frames together (its own video path).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.adapters.temporal import TemporalContext, bind_temporal
from toolchain.frames import MOTION_SCALE, check_frames, gather_frames, motion_energy, select_indices
from toolchain.models import xclip_scoring
from toolchain.models.preprocess import normalize_pixels, preprocess_frames, resize_frames


class VideoCLIP(nn.Module):
    """Wraps a (possibly PEFT-wrapped, possibly 4-bit) CLIPModel, XCLIPModel or VisionTextDualEncoderModel."""

    def __init__(self, clip: nn.Module, k: int, selector: str, image_size: int, mean, std,
                 family: str = "clip", pool: nn.Module | None = None, resize_shortest: int | None = None,
                 rescale: float = 1 / 255, resample: str = "bicubic"):
        super().__init__()
        self.clip = clip
        self.k, self.selector, self.image_size = k, selector, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.family, self.pool = family, pool  # pool None: mean over frames (CLIP4Clip meanP)
        self.resize_shortest, self.rescale, self.resample = resize_shortest, rescale, resample
        self.temporal = TemporalContext()  # read by temporal LoRA layers, if any
        bind_temporal(clip, self.temporal)

    @property
    def core(self) -> nn.Module:
        """The wrapped model (PEFT's, when adapters are on): what adapters attach to and are saved from."""
        return self.clip

    def prepare_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 [B,N,H,W,3] -> (pixels float [B,K,3,S,S], indices int64 [B,K], motion float [B,K] in [0,1])."""
        return self.preparer()(frames)

    def preparer(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """prepare_frames without a reference to the model (a data set may outlive the model)."""
        return FramePreparer(prepare_frames, k=self.k, selector=self.selector, image_size=self.image_size,
                             mean=self.mean, std=self.std, resize_shortest=self.resize_shortest,
                             rescale=self.rescale, resample=self.resample)

    @property
    def conditioned(self) -> bool:
        """Captions are scored conditioned on each video (X-CLIP's prompt generator), not by a plain dot product."""
        return self.family == "xclip"

    def encode_video_parts(self, pixels: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(video embeddings [B,D] L2-normalised, X-CLIP's prompt context [B,P,D] or None)."""
        b, k = pixels.shape[:2]
        flat = pixels.reshape(b * k, *pixels.shape[2:])
        self.temporal.k, self.temporal.motion, self.temporal.active = k, motion, True
        try:
            if self.family == "xclip":  # frames attend to each other inside the tower, then its mit pools
                return xclip_scoring.video_features(self.clip, pixels)
            feats = self.clip.get_image_features(pixel_values=flat).pooler_output
        finally:
            self.temporal.active, self.temporal.motion = False, None
        feats = feats.float().reshape(b, k, -1)
        return F.normalize(feats.mean(dim=1) if self.pool is None else self.pool(feats), dim=-1), None

    def encode_pixels(self, pixels: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return self.encode_video_parts(pixels, motion)[0]

    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, idx, motion = self.prepare_frames(frames)
        return self.encode_pixels(pixels, motion), idx

    def encode_frames_parts(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """uint8 frames -> (video embeddings, frame indices, prompt context or None)."""
        pixels, idx, motion = self.prepare_frames(frames)
        video, context = self.encode_video_parts(pixels, motion)
        return video, idx, context

    def encode_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected text features [B,D], not normalised (what X-CLIP's prompt generator conditions)."""
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out.pooler_output.float()

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_text_features(input_ids, attention_mask), dim=-1)

    def scores(self, video: torch.Tensor, context: torch.Tensor | None, text_features: torch.Tensor) -> torch.Tensor:
        """The model's cosine scores [V,T]: video embeddings against text features (normalised here),
        conditioned on each video when the family does that (context from encode_video_parts)."""
        if context is None:
            return video @ F.normalize(text_features, dim=-1).T
        return xclip_scoring.score_in_chunks(self.clip, video, context, text_features)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().float().exp().clamp(max=100.0)


def prepare_frames(frames: torch.Tensor, k: int, selector: str, image_size: int, mean, std,
                   resize_shortest: int | None, rescale: float, resample: str):
    """Select K frames and preprocess them: the data path's half of VideoCLIP (see its method)."""
    check_frames(frames)
    energy = motion_energy(frames)  # one integer score per frame: selects frames, feeds the gate
    idx = select_indices(energy, k, selector)
    pixels = preprocess_frames(gather_frames(frames, idx), image_size, mean, std, resize_shortest, rescale, resample)
    motion = gather_frames(energy, idx).to(torch.float32) / MOTION_SCALE
    return pixels, idx, motion


class FramePreparer(partial):
    """prepare_frames bound to a model's constants (no model inside, so a data set or a worker
    process can hold it), plus the compact form the frame cache stores for it.

    The compact form is what the model consumes: the K selected frames after the fused crop and
    resize, as uint8 S x S (rounded, as an image processor's resize returns), with the selected
    indices and every decoded frame's motion energy. Selection runs on the full decoded frames
    before anything is shrunk, so the indices and motion are the ones the exported graph computes
    from the same frames; only the pixels carry the rounding (at most 0.5/255 before normalising).
    """

    @property
    def cache_tag(self) -> str:
        """Everything the compact form depends on besides the video and the decode budget."""
        kw = self.keywords
        return (f"clip|k{kw['k']}|{kw['selector']}|s{kw['image_size']}|r{kw['resize_shortest']}|"
                f"{kw['resample'] if kw['resize_shortest'] is not None else 'bilinear'}")

    def compact(self, frames) -> dict:
        """uint8 frames [N,H,W,3] (numpy or torch) -> {"frames" uint8 [K,S,S,3], "indices" int64 [K],
        "energy" int32 [N]} as numpy arrays."""
        kw = self.keywords
        clips = torch.as_tensor(frames).unsqueeze(0)
        check_frames(clips)
        energy = motion_energy(clips)
        idx = select_indices(energy, kw["k"], kw["selector"])
        with torch.no_grad():
            small = resize_frames(gather_frames(clips, idx), kw["image_size"], kw["resize_shortest"], kw["resample"])
        small = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return {"frames": small.contiguous().numpy(), "indices": idx[0].contiguous().numpy(),
                "energy": energy[0].to(torch.int32).contiguous().numpy()}

    def from_compact(self, entry: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A compact entry -> (pixels [1,K,3,S,S], indices [1,K], motion [1,K]), as prepare_frames returns."""
        kw = self.keywords
        idx = torch.from_numpy(entry["indices"]).unsqueeze(0)
        motion = torch.from_numpy(entry["energy"])[idx].to(torch.float32) / MOTION_SCALE
        if entry.get("frames") is None:  # a streamed split keeps only indices and motion
            return None, idx, motion
        x = torch.from_numpy(entry["frames"]).permute(0, 3, 1, 2).to(torch.float32)
        pixels = normalize_pixels(x, kw["mean"], kw["std"], kw["rescale"])
        return pixels.unsqueeze(0), idx, motion


def frame_preparer(k: int, selector: str, info) -> FramePreparer:
    """The preparer of a base (its BaseInfo) without building the model: what `vqtool data prepare` runs."""
    return FramePreparer(prepare_frames, k=k, selector=selector, image_size=info.image_size, mean=tuple(info.mean),
                         std=tuple(info.std), resize_shortest=info.resize_shortest, rescale=info.rescale,
                         resample=info.resample)
