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


SEEK_AHEAD = 32  # frames: a target closer than this is reached by decoding forward, not by a seek


def _decode_all(container, stream, max_frames: int | None, stats: dict) -> np.ndarray:
    # Keep decoded (yuv) frames and convert only the chosen ones to RGB.
    frames = list(container.decode(stream))
    stats["decoded"] = stats.get("decoded", 0) + len(frames)
    if not frames:
        raise VideoReadError(container.name, "no frames")
    keep = frame_indices(len(frames), max_frames)
    return np.stack([frames[i].to_ndarray(format="rgb24") for i in keep])


def frame_count(container, stream) -> int:
    """Frames in the stream from the container's header, or estimated from duration x rate (0: unknown)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.average_rate and stream.time_base:
        return int(stream.duration * stream.time_base * stream.average_rate)
    if container.duration and stream.average_rate:
        return int(container.duration / av.time_base * stream.average_rate)
    return 0


def _decode_seeking(container, stream, n: int, max_frames: int, stats: dict) -> list[np.ndarray] | None:
    """The frames at frame_indices(n, max_frames), reached by keyframe seeks plus forward decoding.

    Frame j is the first frame whose timestamp reaches start + j / fps. A seek is worth it only when
    a keyframe lies between the current position and the target; the keyframe interval (GOP) is
    learnt from the keyframes seen. None when the stream's timestamps do not support this (the
    caller then decodes the file whole).
    """
    tb, rate = stream.time_base, stream.average_rate
    if not tb or not rate:
        return None
    start = stream.start_time or 0
    step = 1 / (rate * tb)  # one frame in stream time units
    out, frames, pos = [], None, _Position(SEEK_AHEAD * step)
    for j in frame_indices(n, max_frames):
        target = start + int(round(j * step))
        seeked = frames is None or pos.worth_seeking(target)
        if seeked:
            container.seek(target, backward=True, any_frame=False, stream=stream)
            frames = container.decode(stream)
        for frame in frames:
            stats["decoded"] = stats.get("decoded", 0) + 1
            if frame.pts is None:
                return None
            pos.saw(frame, target, seeked)
            seeked = False
            if frame.pts >= target - step / 2:
                out.append(frame.to_ndarray(format="rgb24"))
                break
        else:
            return None  # ran out before the target: header frame count was too high
    return out


class _Position:
    """Where decoding stands and what is known of the keyframe spacing."""

    def __init__(self, ahead: float):
        self.last = self.last_key = self.gop = None
        self.ahead = ahead  # before the GOP is known: seek only for targets further than this

    def worth_seeking(self, target) -> bool:
        if self.gop is not None and self.last_key is not None:
            return target >= self.last_key + self.gop  # a keyframe lies between here and the target
        return target - self.last > self.ahead

    def saw(self, frame, target, after_seek: bool) -> None:
        if after_seek and self.last is not None and frame.pts <= self.last:
            # Landed on a keyframe behind where we were: the GOP is longer than `ahead`.
            self.ahead = max(self.ahead, target - frame.pts)
        if frame.key_frame:
            if self.last_key is not None and frame.pts > self.last_key:
                gap = frame.pts - self.last_key
                self.gop = gap if self.gop is None else min(self.gop, gap)
            self.last_key = frame.pts
        self.last = frame.pts


def _read(path: Path, max_frames: int | None, stats: dict) -> np.ndarray:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        stream = container.streams.video[0]
        n = frame_count(container, stream)
        if max_frames is not None and n > max_frames:
            frames = _decode_seeking(container, stream, n, max_frames, stats)
            if frames:
                stats["seeked"] = True
                return np.stack(frames)
            container.seek(0)
        return _decode_all(container, stream, max_frames, stats)


def decode_video(path, max_frames: int | None = None, stats: dict | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB: every frame, or at most max_frames evenly spaced ones (found by seeking).

    `stats`, if given, receives how many frames were decoded ("decoded") and whether seeking was used.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    stats = {} if stats is None else stats
    try:
        return _read(path, max_frames, stats)
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise VideoReadError(path, _error_text(err)) from err
