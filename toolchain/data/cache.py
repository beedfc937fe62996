"""Decoded-frame cache: uint8 frames in .npz files keyed by the video's path, size and mtime.

Decoding is the slow part of loading a dataset; later epochs and runs read the cached frames
instead. Entries are plain npz arrays read with allow_pickle=False (never a pickle), written
atomically, and a changed file (size or mtime) or another decode_max_frames is a different key.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

import numpy as np

from toolchain.data.video import decode_video

CACHE_ENV = "VQTOOL_CACHE_DIR"
FORMAT = 1


def default_cache_dir() -> Path:
    """$VQTOOL_CACHE_DIR, else $XDG_CACHE_HOME/vqtool/frames, else ~/.cache/vqtool/frames."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vqtool" / "frames"


def cache_key(path: Path, max_frames: int | None) -> str:
    st = path.stat()
    ident = f"v{FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_frames}"
    return hashlib.sha256(ident.encode()).hexdigest()


class FrameCache:
    """decode(path, max_frames) -> frames, through the cache; counts hits and misses."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None
        self.hits = self.misses = 0

    def entry(self, path: Path, max_frames: int | None) -> Path:
        key = cache_key(path, max_frames)
        return self.folder / key[:2] / f"{key}.npz"

    def decode(self, path, max_frames: int | None) -> np.ndarray:
        path = Path(path)
        if self.folder is None or not path.is_file():
            self.misses += 1
            return decode_video(path, max_frames)  # raises VideoReadError for a missing file
        entry = self.entry(path, max_frames)
        frames = read_entry(entry)
        if frames is not None:
            self.hits += 1
            return frames
        self.misses += 1
        frames = decode_video(path, max_frames)
        write_entry(entry, frames)
        return frames


def read_entry(entry: Path) -> np.ndarray | None:
    """The cached frames, or None if absent or unreadable (a damaged entry is decoded again)."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as z:
            frames = z["frames"]
    except (OSError, ValueError, KeyError):
        return None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        return None
    return frames


def write_entry(entry: Path, frames: np.ndarray) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".tmp-{uuid.uuid4().hex[:8]}.npz")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, frames=np.ascontiguousarray(frames, dtype=np.uint8))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only or full cache folder only costs speed
    finally:
        tmp.unlink(missing_ok=True)


ENTRY_NAME = re.compile(r"(\.tmp-[0-9a-f]{8}|[0-9a-f]{64})\.npz")


def cache_entries(folder: Path) -> list[Path]:
    """The cache's own files (KEY.npz under a 2-character folder, and leftover temp files); nothing
    else in the folder is ever counted or removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(f for sub in folder.iterdir() if sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)
                  for f in sub.iterdir() if f.is_file() and ENTRY_NAME.fullmatch(f.name))


def clear_cache(folder: Path) -> tuple[int, int]:
    """Remove the cache's entries (and their emptied folders); returns (files, bytes) removed."""
    files = cache_entries(folder)
    size = 0
    for f in files:
        size += f.stat().st_size
        f.unlink(missing_ok=True)
    for sub in {f.parent for f in files}:
        if not any(sub.iterdir()):
            sub.rmdir()
    return len(files), size
