"""A recipe's two splits: read their pairs (failing fast on data mistakes), then decode and prepare
their videos through the frame cache, reporting what was skipped, the loading rate and streaming."""

from __future__ import annotations

from pathlib import Path

from toolchain.data.cache import FrameCache, default_cache_dir
from toolchain.data.clips import ClipSet, load_clips, load_line, stream_line
from toolchain.data.formats import Split, read_split, skip_summary
from toolchain.data.prepare import ensure_data
from toolchain.recipe import Recipe


def cache_folder(recipe: Recipe) -> Path:
    return Path(recipe.data.cache_dir).expanduser() if recipe.data.cache_dir else default_cache_dir()


def frame_cache(recipe: Recipe) -> FrameCache:
    if not recipe.data.cache:
        return FrameCache(None)
    return FrameCache(cache_folder(recipe), recipe.data.cache_max_gb * 1e9)


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
    if (line := over_cap_line(which, clips, cache)) is not None:
        report.warn(line)
    cache.flush()
    return clips


def over_cap_line(which: str, clips: ClipSet, cache: FrameCache) -> str | None:
    """A streamed split whose cache entries do not fit under the cap decodes evicted clips again."""
    if not clips.streamed or cache.max_bytes is None or cache.folder is None or not clips.videos:
        return None
    entry = cache.entry(clips.videos[0], clips.video_pixels.max_frames, getattr(clips.video_pixels.prepare, "cache_tag", "frames"))
    if not entry.is_file() or entry.stat().st_size * len(clips.videos) <= cache.max_bytes:
        return None
    need = entry.stat().st_size * len(clips.videos) / 1e9
    return (f"data {which}: its frame-cache entries (~{need:.1f} GB) exceed data.cache_max_gb "
            f"({cache.max_bytes / 1e9:g}): streamed batches will decode evicted clips again; raise "
            "data.cache_max_gb or free disk for it")


def load_data(recipe: Recipe, splits: dict, prepare, report) -> tuple[ClipSet, ClipSet]:
    """Both splits, sharing one frame cache."""
    cache = frame_cache(recipe)
    return tuple(load_split(recipe, which, splits[which], prepare, cache, report) for which in ("train", "eval"))
