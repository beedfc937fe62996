"""Mini-batches of a ClipSet: a reproducible stream of pair indices, and their pixels (a streamed set
prepares the next batch in a background thread while the current one trains)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from toolchain.data.clips import ClipSet


def batch_stream(n: int, batch: int, seed: int, start: int = 0):
    """Endless shuffled mini-batches of clip indices, reproducible from the seed.

    `start` skips that many batches (a resumed run continues exactly where the data stream was).
    """
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch
    skip_epochs, offset = divmod(start, per_epoch)
    for _ in range(skip_epochs):
        torch.randperm(n, generator=gen)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(offset, per_epoch):
            yield perm[i * batch : (i + 1) * batch]
        offset = 0


def batches(clips: ClipSet, stream, dev):
    """(pair indices, pixels, motion) per batch from an index stream. A streamed set prepares the
    next batch in a background thread while the current one trains."""
    def fetch(idx):
        return idx, clips.pixels[idx].to(dev), clips.motion[idx].to(dev)

    if not clips.streamed:
        for idx in stream:
            yield fetch(idx)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqtool-data") as pool:
        pending = None
        for idx in stream:
            queued = pool.submit(fetch, idx)  # starts as soon as the one before it is done
            if pending is not None:
                yield pending.result()
            pending = queued
        if pending is not None:
            yield pending.result()
