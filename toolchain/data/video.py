"""Decode a video file into uint8 RGB frames, turning every FFmpeg failure into VideoReadError."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from toolchain.errors import VideoReadError


def frame_indices(n: int, max_frames: int | None) -> list[int]:
    """Indices of the frames to keep: all of them, or max_frames evenly spaced (segment centres)."""
    if max_frames is None or n <= max_frames:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * max_frames) for i in range(max_frames)]


def _error_text(err: Exception) -> str:
    if isinstance(err, av.FFmpegError) and err.strerror:
        # str() repeats the errno and the file name; the strerror alone is the useful part.
        return err.strerror
    # Corrupt headers can also surface as Python errors (e.g. undecodable metadata text).
    return f"corrupt or unsupported file ({type(err).__name__}: {err})"


def _decode_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        stream = container.streams.video[0]
        # Keep decoded (yuv) frames and convert only the chosen ones to RGB.
        return list(container.decode(stream))


def decode_video(path, max_frames: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    try:
        frames = _decode_frames(path)
        if not frames:
            raise VideoReadError(path, "no frames")
        keep = frame_indices(len(frames), max_frames)
        return np.stack([frames[i].to_ndarray(format="rgb24") for i in keep])
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise VideoReadError(path, _error_text(err)) from err
