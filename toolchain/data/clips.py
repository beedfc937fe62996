"""Decode annotated videos once, select and preprocess their frames, keep the tensors for training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from toolchain.data.annotations import load_jsonl
from toolchain.data.video import decode_video
from toolchain.errors import DataError, VideoReadError


@dataclass
class ClipSet:
    """Preprocessed clips: pixels [M,K,3,S,S], frame indices and motion [M,K], captions; what was skipped."""

    pixels: torch.Tensor
    indices: torch.Tensor
    motion: torch.Tensor
    captions: list[str]
    videos: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_clips(
    annotations: Path,
    prepare: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    max_frames: int,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """`prepare` maps uint8 [1,N,H,W,3] to (pixels, indices, motion) — the model's own path."""
    samples = load_jsonl(annotations)
    pixels, indices, motion, kept, skipped = [], [], [], [], []
    for i, sample in enumerate(samples):
        try:
            frames = torch.from_numpy(decode_video(sample.video, max_frames))
        except VideoReadError as exc:
            skipped.append((exc.path, exc.reason))
        else:
            with torch.no_grad():
                pix, idx, mot = prepare(frames.unsqueeze(0))
            pixels.append(pix[0])
            indices.append(idx[0])
            motion.append(mot[0])
            kept.append(sample)
        if progress:
            progress(i + 1, len(samples))
    if not kept:
        raise DataError(f"no readable video in {annotations} ({len(skipped)} skipped, first: {skipped[:1]})")
    return ClipSet(torch.stack(pixels), torch.stack(indices), torch.stack(motion), [s.caption for s in kept], [s.video for s in kept], skipped)


def caption_targets(captions: list[str]) -> torch.Tensor:
    """Row-normalised targets where clips sharing a caption are all positives (no false negatives)."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)
