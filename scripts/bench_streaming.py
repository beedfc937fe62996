"""Peak RSS and batch throughput of a training split kept in RAM vs streamed from the frame cache.

    python scripts/bench_streaming.py --videos 128 --frames 300 --size 240x320 --k 12 --batch 32

Writes a synthetic set of real mp4 files (random textures moving, so the codec has work to do),
fills the frame cache once, then runs each mode in a fresh process: load the split (cache hits)
and draw one epoch of training batches through the same `batches()` the fine-tune uses. "stream"
reads the model's compact entries (K frames at 224 px); "stream-frames" the full decoded frames
(what a preparer without a compact form, and vqtool before issue 19, cached). Prints a
table and one JSON line per mode. Preprocessing is ViT-B/32's (224 px, CLIP mean/std).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain.bench.peak import MB, status_kb  # noqa: E402


def make_set(root: Path, videos: int, frames: int, height: int, width: int) -> Path:
    from toolchain.data.synth import write_video

    rng = np.random.default_rng(0)
    rows = []
    for i in range(videos):
        base = rng.integers(0, 255, (height + frames, width, 3), dtype=np.uint8)
        clip = np.stack([base[t : t + height] for t in range(frames)])  # texture scrolling down
        write_video(root / f"v{i:04d}.mp4", clip, fps=30)
        rows.append({"video": f"v{i:04d}.mp4", "caption": f"clip number {i}"})
    annotations = root / "train.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return annotations


def preparer(k: int, compact: bool = True):
    """ViT-B/32's preparer; compact: the model's own (FramePreparer: the cache holds K frames at
    224 px), else a plain function (the cache holds every decoded frame at full size)."""
    from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
    from toolchain.models.video_clip import FramePreparer, prepare_frames

    return (FramePreparer if compact else partial)(prepare_frames, k=k, selector="uniform", image_size=224,
                                                   mean=CLIP_MEAN, std=CLIP_STD, resize_shortest=224,
                                                   rescale=1 / 255, resample="bicubic")


def measure(args) -> dict:
    """One mode in this process: load (from a warm cache), then one epoch of batches."""
    import torch

    from toolchain.data.cache import FrameCache
    from toolchain.data.clips import load_clips
    from toolchain.data.batches import batch_stream, batches

    cache = FrameCache(Path(args.cache))
    budget = float("inf") if args.mode == "memory" else 0.0
    t0 = time.perf_counter()
    clips = load_clips(Path(args.annotations), preparer(args.k, args.mode != "stream-frames"), args.decode_max,
                       cache, memory_bytes=budget, workers=args.workers)
    load_s = time.perf_counter() - t0
    n = len(clips.captions)
    stream = batch_stream(n, args.batch, seed=0)
    waits, it = [], batches(clips, stream, "cpu")
    for _ in range(n // args.batch):
        t = time.perf_counter()
        _, pixels, _ = next(it)
        waits.append(time.perf_counter() - t)
        time.sleep(args.step_s)  # stands in for the training step the prefetch overlaps with
        assert pixels.shape == (args.batch, args.k, 3, 224, 224) and torch.isfinite(pixels).all()
    it.close()
    return {"mode": args.mode, "videos": len(clips.videos), "load_s": round(load_s, 2),
            "batch_wait_p50_s": round(statistics.median(waits), 3), "batch_wait_max_s": round(max(waits), 3),
            "peak_rss_mb": round(status_kb("VmHWM") * 1024 / MB), "streamed": clips.streamed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="240x320", help="HxW of the generated videos")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--decode-max", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--step-s", type=float, default=0.0, help="simulated training step between batches")
    ap.add_argument("--workers", type=int, default=0, help="threads preparing a streamed batch (0: per CPU, up to 8)")
    ap.add_argument("--mode", choices=["memory", "stream", "stream-frames"], help=argparse.SUPPRESS)
    ap.add_argument("--annotations", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    height, width = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="vqtool-stream-") as tmp:
        root = Path(tmp)
        annotations = make_set(root, args.videos, args.frames, height, width)
        from toolchain.data.cache import FrameCache, folder_bytes
        from toolchain.data.clips import load_clips

        for compact, name in ((True, "compact clip entries"), (False, "full-frame entries")):
            folder = root / ("cache" if compact else "cache-frames")
            t0 = time.perf_counter()
            load_clips(annotations, preparer(args.k, compact), args.decode_max, FrameCache(folder), memory_bytes=0)
            print(f"cold pass ({name}: decode {args.videos} videos, fill the cache): {time.perf_counter() - t0:.1f} s, "
                  f"{folder_bytes(folder) / args.videos / 1e6:.2f} MB per entry")
        common = [sys.executable, __file__, "--annotations", str(annotations),
                  "--k", str(args.k), "--decode-max", str(args.decode_max), "--batch", str(args.batch),
                  "--step-s", str(args.step_s), "--workers", str(args.workers)]
        caches = {"memory": "cache", "stream": "cache", "stream-frames": "cache-frames"}
        runs = [subprocess.run([*common, "--mode", m, "--cache", str(root / caches[m])], check=True,
                               capture_output=True, text=True, env=os.environ) for m in caches]
        rows = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    print(f"{'mode':13} {'load s':>7} {'wait p50 s':>11} {'wait max s':>11} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['mode']:13} {r['load_s']:7.2f} {r['batch_wait_p50_s']:11.3f} {r['batch_wait_max_s']:11.3f} "
              f"{r['peak_rss_mb']:12d}")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
