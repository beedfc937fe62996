"""The "wide" shapes distribution: the same caption grammar as synth.py, drawn with per-clip variety.

Per clip: object size (15-40% of the short side), background level with a static texture and
per-frame noise, colour jitter around the named colour, shape proportions and a small tilt, frame
size and aspect ratio, frame rate, clip length, a motion window with rests before and after, and a
codec from h264 / mpeg4 / vp9. Everything is drawn from the clip's generator, so a seed renders the
same clips. The motion stays inside the frame's centred square, as in synth.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE_FRACTION = (0.15, 0.40)
FRAME_RATES = (8, 10, 12, 15, 24, 25, 30)
# (encoder, file extension): vp9 goes into WebM, the container most vp9 footage comes in.
CODECS = (("libx264", ".mp4"), ("mpeg4", ".mp4"), ("libvpx-vp9", ".webm"))
COLOUR_JITTER = 18  # per channel, in 0-255 levels: "red" stays red, not one exact RGB triple
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image coordinates, y down


@dataclass(frozen=True)
class WideClip:
    frames: np.ndarray  # [N, H, W, 3] uint8
    fps: int
    codec: str
    suffix: str


def frame_size(rng: np.random.Generator) -> tuple[int, int]:
    """(H, W), both even: short side 48-112, aspect 0.56-1.78 (portrait, square-ish and wide)."""
    short = 2 * int(rng.integers(24, 57))
    aspect = float(rng.uniform(1.0, 1.78))
    long = 2 * int(round(short * aspect / 2))
    return (short, long) if rng.random() < 0.7 else (long, short)


def jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(rgb, dtype=np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A dark-to-mid grey level plus a smooth static texture (bilinear upsampled coarse noise), [H, W, 3]."""
    level = rng.uniform(5, 95)
    coarse = rng.normal(0, rng.uniform(0, 14), (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3))
    ys, xs = np.linspace(0, coarse.shape[0] - 1, h), np.linspace(0, coarse.shape[1] - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return level + top * (1 - fy) + bottom * fy


def shape_mask(shape: str, h: int, w: int, center: tuple[float, float], size: float,
               aspect: float, tilt: float, apex: float) -> np.ndarray:
    """Mask of a filled shape `size` pixels across (before tilt): an ellipse, a rectangle or a triangle.

    `aspect` stretches width over height, `tilt` rotates (radians), `apex` moves a triangle's apex
    sideways (a fraction of its half-width): proportions vary, the kind of shape does not.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dx, dy = xx - center[0], yy - center[1]
    c, s = np.cos(tilt), np.sin(tilt)
    u, v = c * dx + s * dy, -s * dx + c * dy  # the shape's own axes
    rx, ry = size / 2 * np.sqrt(aspect), size / 2 / np.sqrt(aspect)
    if shape == "circle":
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1
    if shape == "square":
        return (np.abs(u) <= rx) & (np.abs(v) <= ry)
    if shape == "triangle":
        depth = (v + ry) / (2 * ry)  # 0 at the apex row, 1 at the base
        centre = apex * rx * (1 - depth)
        return (depth >= 0) & (depth <= 1) & (np.abs(u - centre) <= depth * rx)
    raise ValueError(f"unknown shape {shape!r}")


def centred_segment(rng: np.random.Generator, h: int, w: int, half: float, dist: float, direction: str):
    """Start and end centres of a straight move of `dist` pixels inside the frame's centred square, the
    object's centre kept `half` pixels from its edges. The visited segment is drawn the same way for
    every direction, so only the frame order tells "left" from "right"."""
    sx, sy = _STEPS[direction]
    side = min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
    lo = rng.uniform(half, side - half - dist)
    start, end = (lo, lo + dist) if (sx + sy) > 0 else (lo + dist, lo)
    cross = rng.uniform(half, side - half)
    if sx:
        return (x0 + start, y0 + cross), (x0 + end, y0 + cross)
    return (x0 + cross, y0 + start), (x0 + cross, y0 + end)


def path(rng: np.random.Generator, h: int, w: int, size: float, direction: str):
    """A move over 60-95% of the room the object leaves in the centred square."""
    half = size / 2 * 1.2  # a tilted or stretched shape reaches a little past size / 2
    return centred_segment(rng, h, w, half, rng.uniform(0.6, 0.95) * (min(h, w) - 2 * half), direction)


def render_wide_clip(rng: np.random.Generator, shape: str, rgb: tuple[int, int, int], direction: str) -> WideClip:
    h, w = frame_size(rng)
    fps = int(FRAME_RATES[rng.integers(len(FRAME_RATES))])
    n = int(rng.integers(16, 49))
    size = rng.uniform(*SIZE_FRACTION) * min(h, w)
    aspect, tilt, apex = rng.uniform(0.8, 1.25), rng.uniform(-0.25, 0.25), rng.uniform(-0.3, 0.3)
    start, end = path(rng, h, w, size, direction)
    move_start = rng.uniform(0.05, 0.35) * n
    move_len = rng.uniform(0.35, 0.6) * n
    colour, back = jittered(rgb, rng), background(rng, h, w)
    noise = rng.uniform(0, 8)
    codec, suffix = CODECS[rng.integers(len(CODECS))]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        p = min(max((t - move_start) / move_len, 0.0), 1.0)
        center = (start[0] + p * (end[0] - start[0]), start[1] + p * (end[1] - start[1]))
        frame = back + rng.normal(0, noise, (h, w, 1))
        frame[shape_mask(shape, h, w, center, size, aspect, tilt, apex)] = colour
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return WideClip(frames, fps, codec, suffix)


def render_wide_still(rng: np.random.Generator, shape: str, rgb: tuple[int, int, int]) -> np.ndarray:
    """One still frame [H, W, 3] uint8 of the wide distribution, the object anywhere in the centred
    square (what a base pretrained on appearance sees)."""
    h, w = frame_size(rng)
    size = rng.uniform(*SIZE_FRACTION) * min(h, w)
    aspect, tilt, apex = rng.uniform(0.8, 1.25), rng.uniform(-0.25, 0.25), rng.uniform(-0.3, 0.3)
    side, half = min(h, w), size / 2 * 1.2
    center = ((w - side) / 2 + rng.uniform(half, side - half), (h - side) / 2 + rng.uniform(half, side - half))
    frame = background(rng, h, w) + rng.normal(0, rng.uniform(0, 8), (h, w, 1))
    frame[shape_mask(shape, h, w, center, size, aspect, tilt, apex)] = jittered(rgb, rng)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)
