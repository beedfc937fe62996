"""`vqtool data prepare RECIPE`: decode a recipe's splits into the frame cache ahead of training.

Videos are decoded, their frames selected and shrunk to what the model consumes (the compact
entries of `FramePreparer`) by a pool of worker processes (`data.workers`; 0: one per CPU, up to 8).
Every entry is written atomically, so a killed prepare leaves only whole entries: a rerun skips
them and decodes the rest. Fine-tune then reads every clip from the cache (and streams a split too
large for RAM from it). The cap (`data.cache_max_gb`) is kept by this process as entries arrive.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.data.cache import FrameCache
from toolchain.data.clips import group_by_video
from toolchain.data.splits import frame_cache, read_splits
from toolchain.errors import DataError, VideoReadError
from toolchain.recipe import Recipe

SPLITS = ("train", "eval")


@dataclass
class Prepared:
    """What one prepare did to one split."""

    which: str
    videos: int = 0
    decoded: int = 0
    cached: int = 0  # already in the cache (a resumed or repeated prepare)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable videos: (path, reason)

    def line(self) -> str:
        return (f"{self.which}: {self.videos} clips, {self.decoded} decoded, {self.cached} already cached, "
                f"{len(self.skipped)} unreadable")


def recipe_preparer(recipe: Recipe):
    """The model's frame preparer, from the base's constants only (no weights are loaded)."""
    from toolchain.models.build import base_info
    from toolchain.models.video_clip import frame_preparer

    info = base_info(recipe.model.name_or_path, recipe.model.family)
    if info.num_frames is not None and info.num_frames != recipe.frames.k:
        raise DataError(f"frames.k is {recipe.frames.k}, but the xclip base takes exactly {info.num_frames} "
                        f"frames; set frames.k: {info.num_frames}")
    return frame_preparer(recipe.frames.k, recipe.frames.selector, info)


def pool_size(workers: int) -> int:
    return workers or min(8, os.cpu_count() or 1)


def _init_worker() -> None:
    import signal

    import torch

    torch.set_num_threads(1)  # the pool is the parallelism; more threads per process only contend
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it lets running clips finish


def _prepare_one(task: tuple) -> tuple[str, str, int, str | None]:
    """In a worker: decode, shrink and write one video's entry -> (which, video, bytes, error)."""
    which, video, max_frames, prep, folder = task
    cache = FrameCache(folder, record=False)  # no cap or counts here: the parent process keeps both
    try:
        cache.clip(video, max_frames, prep)
    except VideoReadError as exc:
        return which, str(video), 0, exc.reason
    entry = cache.entry(video, max_frames, prep.cache_tag)
    return which, str(video), entry.stat().st_size if entry.is_file() else 0, None


def prepare_recipe(recipe: Recipe, report, which: tuple[str, ...] = SPLITS, workers: int | None = None) -> dict:
    """Decode every video of the chosen splits into the recipe's frame cache; returns a summary."""
    if not recipe.data.cache:
        raise DataError("data.cache is false, so there is no frame cache to prepare; set data.cache: true")
    prep = recipe_preparer(recipe)
    splits = read_splits(recipe, report)
    cache, max_frames = frame_cache(recipe), recipe.frames.decode_max_frames
    results = {w: Prepared(w) for w in which}
    tasks = []
    for w in which:
        videos, _ = group_by_video(splits[w])
        results[w].videos = len(videos)
        for video in videos:
            if cache.has(video, max_frames, prep.cache_tag):
                results[w].cached += 1
            else:
                tasks.append((w, video, max_frames, prep, cache.folder))
    n = pool_size(recipe.data.workers if workers is None else workers)
    t0 = time.perf_counter()
    with report.task(f"preparing {' + '.join(which)} clips ({n} workers)", len(tasks)) as advance:
        first = run_pool(tasks, n, cache, results, advance, (max_frames, prep.cache_tag))
    seconds = time.perf_counter() - t0
    cache.tally.hits += sum(r.cached for r in results.values())
    cache.flush()
    decoded = sum(r.decoded for r in results.values())
    steady = seconds - (first - t0) if first else 0.0  # after the pool started and sent its first clip
    return {"splits": results, "seconds": seconds, "workers": n, "decoded": decoded,
            "clips_per_s": decoded / seconds if decoded else 0.0,
            "steady_clips_per_s": (decoded - 1) / steady if decoded > 1 and steady > 0 else None,
            "start_s": first - t0 if first else 0.0, "folder": cache.folder,
            "evicted": cache.evicted, "cap_gb": recipe.data.cache_max_gb}


def run_pool(tasks: list, n: int, cache: FrameCache, results: dict, advance, key: tuple) -> float | None:
    """Run the tasks on `n` worker processes, counting results and keeping the cap as entries arrive;
    returns when the first result came (perf_counter), None without tasks."""
    if not tasks:
        return None
    first = None
    chunk = max(1, min(16, len(tasks) // (8 * n)))
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        for which, video, size, error in pool.map(_prepare_one, tasks, chunksize=chunk):
            if error is not None:
                results[which].skipped.append((video, error))
            else:
                results[which].decoded += 1
                cache.tally.misses += 1
                cache.account(size, keep=cache.entry(video, *key))
            advance(1)
            first = first or time.perf_counter()
    except BrokenProcessPool as exc:
        raise DataError(f"a data.prepare worker process died ({exc}); entries written so far are kept: "
                        "run `vqtool data prepare` again to continue") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return first


def summary_lines(summary: dict) -> list[str]:
    lines = [r.line() for r in summary["splits"].values()]
    for r in summary["splits"].values():
        if r.skipped:
            head = "; ".join(f"{p}: {why}" for p, why in r.skipped[:3])
            lines.append(f"{r.which}: skipped {len(r.skipped)} unreadable video(s), e.g. {head}")
    from toolchain.data.cache import folder_bytes

    size = folder_bytes(Path(summary["folder"])) / 1e9
    steady = summary["steady_clips_per_s"]
    rate = f" ({steady:.1f} clips/s once the pool ran, {summary['start_s']:.1f} s to start it)" if steady else ""
    lines.append(f"prepared in {summary['seconds']:.1f} s: {summary['clips_per_s']:.1f} clips/s decoded with "
                 f"{summary['workers']} worker(s){rate}; frame cache {summary['folder']}: {size:.3f} GB "
                 f"(cap {summary['cap_gb']:g} GB, {summary['evicted']} evicted)")
    return lines
