"""Decoded-frame cache: uint8 .npz entries keyed by the video's path, size and mtime, capped in size.

Two kinds of entry:
- frames: the decoded frames (at most decode_max_frames), full size (`FrameCache.decode`);
- clip: what a model consumes (`FramePreparer.compact`): its K selected frames cropped and resized
  to S x S, the selected indices and every decoded frame's motion energy (`FrameCache.clip`), a
  fraction of the frames entry (K of N frames, S x S pixels).

Entries are plain npz arrays read with allow_pickle=False (never a pickle), written atomically (temp
name, then rename) and checked when read (zip CRC, format number, dtypes, shapes, index range): a
damaged entry is decoded again and rewritten, never trusted. The key holds the format version, so
entries written by an older vqtool are never read; nothing touches them, so they are evicted first.
With a cap (`data.cache_max_gb`), writing past it evicts the least recently used entries (a read
touches its entry's mtime) down to 90% of the cap. Hits, misses and evictions add up in stats.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import weakref
import zipfile
from pathlib import Path

import numpy as np

from toolchain.data.video import decode_video

CACHE_ENV = "VQTOOL_CACHE_DIR"
FORMAT = 2  # 1: full frames only, no format member (never read: the key differs)
DEFAULT_MAX_GB = 50.0
LOW_WATER = 0.9  # eviction frees down to this share of the cap, so it does not run on every write
STALE_TMP_S = 3600  # a temp file this old is a killed writer's leftover
STATS, STATS_LOCK = "stats.json", ".stats.lock"


def default_cache_dir() -> Path:
    """$VQTOOL_CACHE_DIR, else $XDG_CACHE_HOME/vqtool/frames, else ~/.cache/vqtool/frames."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vqtool" / "frames"


def cache_key(path: Path, max_frames: int | None, tag: str = "frames") -> str:
    st = path.stat()
    ident = f"v{FORMAT}|{tag}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_frames}"
    return hashlib.sha256(ident.encode()).hexdigest()


class Tally:
    """Lookups of one FrameCache; what is not yet in stats.json is flushed there (also at exit)."""

    def __init__(self):
        self.hits = self.misses = self.evicted = 0
        self.flushed = (0, 0, 0)

    def pending(self) -> tuple[int, int, int]:
        return self.hits - self.flushed[0], self.misses - self.flushed[1], self.evicted - self.flushed[2]


class FrameCache:
    """decode(path, max_frames) -> frames, or clip(path, max_frames, preparer) -> compact entry,
    through the cache; counts hits, misses and evictions. `max_bytes` None: no cap. `record`: add
    the counts to the folder's stats.json when the cache goes (False: the caller reports them)."""

    def __init__(self, folder: Path | None, max_bytes: float | None = None, record: bool = True):
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = max_bytes
        self.tally = Tally()
        self._size: int | None = None  # bytes held, known from the first write on
        if self.folder is not None and record:
            weakref.finalize(self, flush_tally, self.folder, self.tally, max_bytes)

    hits = property(lambda self: self.tally.hits)
    misses = property(lambda self: self.tally.misses)
    evicted = property(lambda self: self.tally.evicted)

    def entry(self, path: Path, max_frames: int | None, tag: str = "frames") -> Path:
        key = cache_key(Path(path), max_frames, tag)
        return self.folder / key[:2] / f"{key}.npz"

    def decode(self, path, max_frames: int | None) -> np.ndarray:
        """The decoded frames uint8 [N,H,W,3] (raises VideoReadError for an unreadable file)."""
        return self._through(path, max_frames, "frames", lambda f: {"frames": f}, frames_entry_ok)["frames"]

    def clip(self, path, max_frames: int | None, prep, frames: bool = True) -> dict:
        """`prep.compact` of the video's decoded frames: {"frames", "indices", "energy"}.

        frames=False reads only the indices and energy of a hit (a streamed split's first pass).
        """
        members = None if frames else ("indices", "energy")
        return self._through(path, max_frames, prep.cache_tag, prep.compact, clip_entry_ok, members)

    def _through(self, path, max_frames, tag: str, make, check, members=None) -> dict:
        path = Path(path)
        if self.folder is None or not path.is_file():
            self.tally.misses += 1
            return make(decode_video(path, max_frames))  # raises VideoReadError for a missing file
        entry = self.entry(path, max_frames, tag)
        arrays = read_entry(entry, check, members)
        if arrays is not None:
            self.tally.hits += 1
            touch(entry)
            return arrays
        self.tally.misses += 1
        arrays = make(decode_video(path, max_frames))
        self.account(write_entry(entry, arrays), keep=entry)
        return arrays

    def has(self, path, max_frames: int | None, tag: str) -> bool:
        """A readable entry exists (its zip directory and members; the data is checked when read)."""
        try:
            entry = self.entry(path, max_frames, tag)
            with zipfile.ZipFile(entry) as z:
                return {"format.npy", "indices.npy", "energy.npy"} <= set(z.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    def account(self, size: int, keep: Path | None = None) -> None:
        """`size` new bytes were written; past the cap, evict least recently used entries (not `keep`)."""
        if self.max_bytes is None or self.folder is None or not size:
            return
        self._size = folder_bytes(self.folder) if self._size is None else self._size + size
        if self._size > self.max_bytes:
            removed, self._size = evict(self.folder, LOW_WATER * self.max_bytes, keep)
            self.tally.evicted += removed

    def flush(self) -> None:
        """Add this cache's new hits, misses and evictions to the folder's stats.json."""
        if self.folder is not None:
            flush_tally(self.folder, self.tally, self.max_bytes)


def frames_entry_ok(a: dict) -> bool:
    f = a.get("frames")
    return f is not None and f.dtype == np.uint8 and f.ndim == 4 and f.shape[-1] == 3 and f.shape[0] >= 1


def clip_entry_ok(a: dict) -> bool:
    idx, energy, frames = a.get("indices"), a.get("energy"), a.get("frames", np.zeros((0, 1, 1, 3), np.uint8))
    if idx is None or energy is None or idx.dtype != np.int64 or energy.dtype != np.int32:
        return False
    if idx.ndim != 1 or energy.ndim != 1 or not len(idx) or not len(energy):
        return False
    if idx.min() < 0 or idx.max() >= len(energy):
        return False
    if "frames" not in a:
        return True
    return frames.dtype == np.uint8 and frames.shape[:1] == idx.shape and frames.ndim == 4 and frames.shape[-1] == 3


def read_entry(entry: Path, check=frames_entry_ok, members=None) -> dict | None:
    """The entry's arrays (all, or `members`), or None if absent, damaged or not this format."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as z:
            if "format" not in z.files or int(z["format"]) != FORMAT:
                return None
            arrays = {name: z[name] for name in (members or [n for n in z.files if n != "format"])}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if check(arrays) else None


def write_entry(entry: Path, arrays: dict) -> int:
    """Atomically write the arrays; returns the bytes written (0 if the folder is not writable)."""
    tmp = entry.with_name(f".tmp-{uuid.uuid4().hex[:8]}.npz")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, format=np.int64(FORMAT), **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        os.replace(tmp, entry)
        return entry.stat().st_size
    except OSError:
        return 0  # a read-only or full cache folder only costs speed
    finally:
        tmp.unlink(missing_ok=True)


def touch(entry: Path) -> None:
    try:
        os.utime(entry)  # mtime = last use: what eviction orders by (atime is often not kept)
    except OSError:
        pass


ENTRY_NAME = re.compile(r"(\.tmp-[0-9a-f]{8}|[0-9a-f]{64})\.npz")


def cache_entries(folder: Path) -> list[Path]:
    """The cache's own files (KEY.npz under a 2-character folder, and leftover temp files); nothing
    else in the folder is ever counted or removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(f for sub in folder.iterdir() if sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)
                  for f in sub.iterdir() if f.is_file() and ENTRY_NAME.fullmatch(f.name))


def entry_stats(folder: Path) -> list[tuple[int, int, Path]]:
    """(mtime_ns, size, path) of every cache file still there."""
    out = []
    for f in cache_entries(folder):
        try:
            st = f.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        out.append((st.st_mtime_ns, st.st_size, f))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(size for _, size, _ in entry_stats(folder))


def evict(folder: Path, target_bytes: float, keep: Path | None = None) -> tuple[int, int]:
    """Remove least recently used entries until at most `target_bytes` remain (and stale temp
    files); returns (entries removed, bytes left)."""
    items = sorted(entry_stats(folder))
    total, removed, now = sum(size for _, size, _ in items), 0, time.time_ns()
    for mtime, size, f in items:
        is_tmp = f.name.startswith(".tmp-")
        if is_tmp and now - mtime > STALE_TMP_S * 1e9:
            f.unlink(missing_ok=True)
            total -= size
        elif total > target_bytes and not is_tmp and f != keep:
            f.unlink(missing_ok=True)
            total, removed = total - size, removed + 1
    return removed, total


def read_stats(folder: Path) -> dict:
    try:
        stats = json.loads((Path(folder) / STATS).read_text())
    except (OSError, ValueError):
        stats = {}
    base = {"hits": 0, "misses": 0, "evicted": 0, "since": None, "cap_gb": None}
    return {**base, **stats} if isinstance(stats, dict) else base


def flush_tally(folder: Path, tally: Tally, max_bytes: float | None) -> None:
    """Add a tally's unflushed counts to stats.json (read-modify-write under a lock file)."""
    hits, misses, evicted = tally.pending()
    if not (hits or misses or evicted) or not Path(folder).is_dir():
        return  # never re-create a folder that was removed
    try:
        with open(Path(folder) / STATS_LOCK, "a") as lock:
            _lock(lock)
            stats = read_stats(folder)
            stats.update(hits=stats["hits"] + hits, misses=stats["misses"] + misses,
                         evicted=stats["evicted"] + evicted, since=stats["since"] or time.strftime("%Y-%m-%d %H:%M"))
            if max_bytes is not None:
                stats["cap_gb"] = max_bytes / 1e9
            tmp = Path(folder) / f".{STATS}.{uuid.uuid4().hex[:8]}"
            tmp.write_text(json.dumps(stats))
            os.replace(tmp, Path(folder) / STATS)
    except OSError:
        return
    tally.flushed = (tally.hits, tally.misses, tally.evicted)


def _lock(f) -> None:
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
    except ImportError:  # no fcntl (Windows): concurrent updates may lose a few counts
        pass


def clear_cache(folder: Path) -> tuple[int, int]:
    """Remove the cache's entries (and their emptied folders) and its counts; returns (files, bytes) removed."""
    files = cache_entries(folder)
    size = 0
    for f in files:
        size += f.stat().st_size
        f.unlink(missing_ok=True)
    for sub in {f.parent for f in files}:
        if not any(sub.iterdir()):
            sub.rmdir()
    for name in (STATS, STATS_LOCK):
        (Path(folder) / name).unlink(missing_ok=True)
    return len(files), size
