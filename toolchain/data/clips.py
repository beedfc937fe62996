"""Decode a split's videos once (through the frame cache), select and preprocess their frames.

A split is (video, caption) pairs; a video with several captions is decoded and preprocessed once.
Training indexes pairs (`clips.pixels[pair_idx]` gathers each pair's video), evaluation uses the
videos and captions apart with `video_of` mapping each caption to its video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from toolchain.data.cache import FrameCache
from toolchain.data.formats import Split, read_jsonl
from toolchain.errors import DataError, VideoReadError
from toolchain.recipe import DataSection


class PairView:
    """Per-pair view of a per-video tensor: view[i] is the tensor row of pair i's video."""

    def __init__(self, per_video: torch.Tensor, video_of: torch.Tensor):
        self.per_video, self.video_of = per_video, video_of

    def __getitem__(self, idx):
        return self.per_video[self.video_of[idx]]

    def __len__(self) -> int:
        return len(self.video_of)

    @property
    def shape(self) -> tuple:
        return (len(self.video_of), *self.per_video.shape[1:])


@dataclass
class ClipSet:
    """Per video: pixels [V,K,3,S,S], frame indices and motion [V,K], paths. Per pair: caption, video."""

    video_pixels: torch.Tensor
    video_indices: torch.Tensor
    video_motion: torch.Tensor
    videos: list
    captions: list[str]
    video_of: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    load: dict = field(default_factory=dict)  # seconds, cache hits/misses: the data-loading benchmark

    @property
    def pixels(self) -> PairView:
        return PairView(self.video_pixels, self.video_of)

    @property
    def motion(self) -> PairView:
        return PairView(self.video_motion, self.video_of)

    @property
    def indices(self) -> PairView:
        return PairView(self.video_indices, self.video_of)


def group_by_video(split: Split) -> tuple[list, list[list[str]]]:
    """Unique videos in first-seen order and the captions of each."""
    order: dict = {}
    for s in split.pairs:
        order.setdefault(s.video, []).append(s.caption)
    return list(order), list(order.values())


def load_clips(
    split: Split | Path | str,
    prepare: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    max_frames: int,
    cache: FrameCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """`prepare` maps uint8 [1,N,H,W,3] to (pixels, indices, motion) — the model's own path.

    `split`: a read split, or the path of a jsonl annotation file.
    """
    if not isinstance(split, Split):
        split = read_jsonl(DataSection(format="jsonl"), str(split))
    cache = cache or FrameCache(None)
    hits0, misses0, t0 = cache.hits, cache.misses, time.perf_counter()
    videos, caption_lists = group_by_video(split)
    pixels, indices, motion, kept, captions, video_of = [], [], [], [], [], []
    skipped = list(split.skipped)
    for i, (video, caps) in enumerate(zip(videos, caption_lists)):
        try:
            frames = torch.from_numpy(cache.decode(video, max_frames))
        except VideoReadError as exc:
            skipped.append((exc.path, exc.reason))
        else:
            with torch.no_grad():
                pix, idx, mot = prepare(frames.unsqueeze(0))
            pixels.append(pix[0]), indices.append(idx[0]), motion.append(mot[0])
            captions += caps
            video_of += [len(kept)] * len(caps)
            kept.append(video)
        if progress:
            progress(i + 1, len(videos))
    if not kept:
        raise DataError(f"no readable video in {split.source} ({len(skipped)} skipped, first: {skipped[:1]})")
    load = {"videos": len(videos), "seconds": time.perf_counter() - t0,
            "cache_hits": cache.hits - hits0, "cache_misses": cache.misses - misses0}
    return ClipSet(torch.stack(pixels), torch.stack(indices), torch.stack(motion), kept, captions,
                   torch.tensor(video_of, dtype=torch.int64), skipped, load)


def load_line(which: str, clips: ClipSet) -> str:
    """The data-loading benchmark line printed during fine-tune."""
    ld = clips.load
    rate = ld["videos"] / max(ld["seconds"], 1e-9)
    return (f"data {which}: {ld['videos']} clips ({len(clips.captions)} captions) loaded in "
            f"{ld['seconds']:.2f} s, {rate:.1f} clips/s; frame cache {ld['cache_hits']} hits, "
            f"{ld['cache_misses']} misses")


def caption_targets(captions: list[str]) -> torch.Tensor:
    """Row-normalised targets where clips sharing a caption are all positives (no false negatives)."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)
