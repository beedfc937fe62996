"""Decode a split's videos once (through the frame cache), select and preprocess their frames.

A split is (video, caption) pairs; a video with several captions is decoded and preprocessed once.
Training indexes pairs (`clips.pixels[pair_idx]` gathers each pair's video), evaluation uses the
videos and captions apart with `video_of` mapping each caption to its video.

Prepared pixels are float32 [K,3,S,S] per video: 7 MB at K=12, S=224, so MSR-VTT's 9k training
videos would need ~65 GB. A split whose pixels fit in `memory_bytes` keeps them in RAM; a larger
one keeps only the frame indices and motion, and `StreamedPixels` prepares each batch's videos again
from the frame cache (filled by the first pass, or ahead of time by `vqtool data prepare`), the same
way, so the pixels are identical. A model's preparer (FramePreparer) caches its compact form: the K
selected frames already cropped and resized to S x S uint8, so a streamed batch only normalises them.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from toolchain.data.cache import FrameCache
from toolchain.data.formats import Split, read_jsonl
from toolchain.errors import DataError, VideoReadError
from toolchain.recipe import DataSection


Prepare = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class StreamedPixels:
    """Per-video prepared pixels made on demand: decode (through the cache) and prepare each video,
    `workers` videos at a time (decoding, npz reads and torch ops release the GIL).

    Indexes like the tensor it stands for (an int, a slice, or a tensor/list of video indices).
    """

    def __init__(self, videos: list, prepare: Prepare, max_frames: int, cache: FrameCache, shape: tuple,
                 workers: int = 0):
        self.videos, self.prepare, self.max_frames, self.cache = videos, prepare, max_frames, cache
        self.shape = (len(videos), *shape)
        self.workers = workers or min(8, os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, idx) -> torch.Tensor:
        rows = range(len(self.videos))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        if isinstance(rows, int):  # an int or a 0-d tensor (what PairView passes for one pair)
            return self.one(rows)
        out = torch.empty(len(rows), *self.shape[1:])

        def fill(j: int) -> None:
            out[j] = self.one(rows[j])

        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(rows)))) as pool:
            list(pool.map(fill, range(len(rows))))
        return out

    def one(self, i: int) -> torch.Tensor:
        video = self.videos[i]
        try:
            return prepared(video, self.prepare, self.max_frames, self.cache)[0][0]
        except VideoReadError as exc:
            raise DataError(f"{video} was readable when the split was loaded but not now ({exc.reason}); "
                            "was it changed or removed during the run?") from exc


def prepared(video, prepare: Prepare, max_frames: int, cache: FrameCache, pixels: bool = True):
    """(pixels [1,K,3,S,S], indices [1,K], motion [1,K]) of one video through the cache.

    A preparer with a compact form (FramePreparer) goes through its cached compact entry (the K
    frames at model size); pixels=False then reads only indices and motion of a hit (pixels None).
    Any other callable gets the decoded frames.
    """
    if hasattr(prepare, "compact"):
        return prepare.from_compact(cache.clip(video, max_frames, prepare, frames=pixels))
    frames = torch.from_numpy(cache.decode(video, max_frames))
    with torch.no_grad():
        return prepare(frames.unsqueeze(0))


class PairView:
    """Per-pair view of a per-video tensor: view[i] is the tensor row of pair i's video."""

    def __init__(self, per_video, video_of: torch.Tensor):
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
    """Per video: pixels [V,K,3,S,S] (a tensor, or StreamedPixels), frame indices and motion [V,K],
    paths. Per pair: caption (for a question-answer row, the answer), video, and for QA rows the
    question and its type (None for captions)."""

    video_pixels: torch.Tensor | StreamedPixels
    video_indices: torch.Tensor
    video_motion: torch.Tensor
    videos: list
    captions: list[str]
    video_of: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    load: dict = field(default_factory=dict)  # seconds, cache hits/misses: the data-loading benchmark
    questions: list[str | None] = field(default_factory=list)
    qtypes: list[str | None] = field(default_factory=list)

    @property
    def streamed(self) -> bool:
        return isinstance(self.video_pixels, StreamedPixels)

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
    videos, rows = rows_by_video(split)
    return videos, [[s.caption for s in r] for r in rows]


def rows_by_video(split: Split) -> tuple[list, list[list]]:
    """Unique videos in first-seen order and the rows (Samples) of each."""
    order: dict = {}
    for s in split.pairs:
        order.setdefault(s.video, []).append(s)
    return list(order), list(order.values())


def load_clips(
    split: Split | Path | str,
    prepare: Prepare,
    max_frames: int,
    cache: FrameCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    memory_bytes: float = float("inf"),
    workers: int = 0,
) -> ClipSet:
    """`prepare` maps uint8 [1,N,H,W,3] to (pixels, indices, motion) — the model's own path.

    `split`: a read split, or the path of a jsonl annotation file. When every video's pixels
    together would exceed `memory_bytes`, they are not kept: the set streams them (StreamedPixels,
    preparing `workers` videos at a time; 0: up to 8, one per CPU).
    """
    if not isinstance(split, Split):
        split = read_jsonl(DataSection(format="jsonl"), str(split))
    cache = cache or FrameCache(None)
    hits0, misses0, t0 = cache.hits, cache.misses, time.perf_counter()
    videos, row_lists = rows_by_video(split)
    kept, captions, video_of, skipped, questions, qtypes = [], [], [], list(split.skipped), [], []
    store = indices = motion = shape = None
    for i, (video, samples) in enumerate(zip(videos, row_lists)):
        try:
            pix, idx, mot = prepared(video, prepare, max_frames, cache, pixels=shape is None or store is not None)
        except VideoReadError as exc:
            skipped.append((exc.path, exc.reason))
        else:
            if shape is None:
                # One tensor per split, filled in place: small per-video tensors kept alive between
                # the big per-video buffers fragment glibc's heap (measured: ~5 MB of RSS per video).
                shape, n = tuple(pix.shape[1:]), len(videos)
                indices, motion = idx.new_empty(n, *idx.shape[1:]), mot.new_empty(n, *mot.shape[1:])
                store = pix.new_empty(n, *shape) if pix[0].nbytes * n <= memory_bytes else None
            for rows, row in ((store, pix), (indices, idx), (motion, mot)):
                if rows is not None and row is not None:
                    rows[len(kept)] = row[0]
            captions += [r.caption for r in samples]
            questions += [r.question for r in samples]
            qtypes += [r.qtype for r in samples]
            video_of += [len(kept)] * len(samples)
            kept.append(video)
        if progress:
            progress(i + 1, len(videos))
    if not kept:
        raise DataError(f"no readable video in {split.source} ({len(skipped)} skipped, first: {skipped[:1]})")
    load = {"videos": len(videos), "seconds": time.perf_counter() - t0,
            "cache_hits": cache.hits - hits0, "cache_misses": cache.misses - misses0}
    if store is None:  # the split is too large for RAM: stream it
        store = StreamedPixels(kept, prepare, max_frames, cache, shape, workers)
    else:
        store = store[: len(kept)]
    return ClipSet(store, indices[: len(kept)], motion[: len(kept)], kept, captions,
                   torch.tensor(video_of, dtype=torch.int64), skipped, load, questions, qtypes)


def load_line(which: str, clips: ClipSet) -> str:
    """The data-loading benchmark line printed during fine-tune."""
    ld = clips.load
    rate = ld["videos"] / max(ld["seconds"], 1e-9)
    return (f"data {which}: {ld['videos']} clips ({len(clips.captions)} captions) loaded in "
            f"{ld['seconds']:.2f} s, {rate:.1f} clips/s; frame cache {ld['cache_hits']} hits, "
            f"{ld['cache_misses']} misses")


def stream_line(which: str, clips: ClipSet, data) -> str:
    n, shape = len(clips.videos), clips.video_pixels.shape[1:]
    gb = n * math.prod(shape) * 4 / 2**30
    line = (f"data {which}: the prepared pixels ({n} x {'x'.join(map(str, shape))} float32, {gb:.1f} GB) exceed "
            f"data.in_memory_gb ({data.in_memory_gb:g}): each batch is prepared again from the frame cache")
    if not data.cache:
        line += "; data.cache is false, so every batch decodes its videos again (slow): set data.cache: true"
    return line


def caption_targets(captions: list[str]) -> torch.Tensor:
    """Row-normalised targets where clips sharing a caption are all positives (no false negatives)."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)
