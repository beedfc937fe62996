"""Mini-batches of a ClipSet: a reproducible stream of pair indices, and their pixels (a streamed set
prepares the next batch in a background thread while the current one trains)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from toolchain.data.clips import ClipSet


def spread_order(keys: list, gen: torch.Generator) -> torch.Tensor:
    """A random order of the examples in which each key's examples are spread evenly over the epoch.

    Example i, the r-th of its key's c examples (in a random order), sorts at (r + u) / c with u
    uniform in [0, 1): any window of B examples holds about B x c / n of each key, so a batch rarely
    holds one caption twice and holds the captions that differ from it in one word as negatives.
    """
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    place = torch.empty(len(keys))
    for members in groups.values():
        ranks = torch.randperm(len(members), generator=gen).double()
        jitter = torch.rand(len(members), generator=gen, dtype=torch.float64)
        place[torch.tensor(members)] = ((ranks + jitter) / len(members)).float()
    return torch.argsort(place)


def batch_stream(n: int, batch: int, seed: int, start: int = 0, keys: list | None = None):
    """Endless shuffled mini-batches of clip indices, reproducible from the seed; with `keys` (one per
    example, e.g. its caption) each epoch is a spread order (spread_order) instead of a plain shuffle.

    `start` skips that many batches (a resumed run continues exactly where the data stream was).
    """
    gen = torch.Generator().manual_seed(seed)

    def order() -> torch.Tensor:
        return torch.randperm(n, generator=gen) if keys is None else spread_order(keys, gen)

    per_epoch = n // batch
    skip_epochs, offset = divmod(start, per_epoch)
    for _ in range(skip_epochs):
        order()
    while True:
        perm = order()
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
