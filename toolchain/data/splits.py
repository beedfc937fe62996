"""A recipe's two splits: read their pairs (failing fast on data mistakes), then decode and prepare
their videos through the frame cache, reporting what was skipped, the loading rate and streaming."""

from __future__ import annotations

from pathlib import Path

from toolchain.data.cache import FrameCache, default_cache_dir
from toolchain.data.clips import ClipSet, load_clips, load_line, stream_line
from toolchain.data.formats import Split, read_split, skip_summary
from toolchain.data.prepare import ensure_data
from toolchain.recipe import Recipe


def frame_cache(recipe: Recipe) -> FrameCache:
    if not recipe.data.cache:
        return FrameCache(None)
    return FrameCache(Path(recipe.data.cache_dir).expanduser() if recipe.data.cache_dir else default_cache_dir())


def read_splits(recipe: Recipe, report) -> dict:
    """Both splits' (video, caption) pairs, read before any model loads so a data mistake fails fast;
    what was skipped is reported with the first few examples."""
    ensure_data(recipe.data, report)
    splits = {}
    for which in ("train", "eval"):
        splits[which] = read_split(recipe.data, which, recipe.task)
        if (line := skip_summary(which, splits[which])) is not None:
            report.warn(line)
    return splits


def load_split(recipe: Recipe, which: str, split: Split, prepare, cache: FrameCache, report) -> ClipSet:
    """Decode one split through the frame cache and prepare its frames; prints the data-loading
    benchmark line (clips/s, cache hits and misses), and says when the split streams."""
    with report.task(f"decoding {which} videos", None) as adv:
        clips = load_clips(split, prepare, recipe.frames.decode_max_frames, cache, adv.progress,
                           recipe.data.in_memory_gb * 2**30, recipe.data.workers)
    report.skipped(clips.skipped[len(split.skipped):])
    report.say(load_line(which, clips))
    if clips.streamed:
        report.say(stream_line(which, clips, recipe.data))
    return clips


def load_data(recipe: Recipe, splits: dict, prepare, report) -> tuple[ClipSet, ClipSet]:
    """Both splits, sharing one frame cache."""
    cache = frame_cache(recipe)
    return tuple(load_split(recipe, which, splits[which], prepare, cache, report) for which in ("train", "eval"))
