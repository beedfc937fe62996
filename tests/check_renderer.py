"""An independent renderer of the shapes caption grammar, used only to score models, never to train them.

Its own drawing code (PIL polygons on a 4x supersampled canvas, downsampled with a box filter, so
edges are anti-aliased), its own colour values, a noise model with a vertical light gradient, per-frame
sensor noise and sparse speckle, objects 20-32% of the short side, constant-speed motion over the
whole clip, and h264 / mpeg4 / vp9. It imports nothing from toolchain's renderers: a model that only
learned synth.py's drawing routine fails here.

Run: python tests/check_renderer.py OUT_DIR [--seed 0] [--repeats 1]   (writes OUT_DIR/eval.jsonl, clips per caption)
"""

from __future__ import annotations

import argparse
import itertools
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (205, 35, 45), "green": (35, 175, 75), "blue": (45, 75, 205), "yellow": (235, 205, 35)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
CODECS = (("libx264", ".mp4", {"crf": "23", "preset": "ultrafast"}), ("mpeg4", ".avi", {"b": "600k"}),
          ("libvpx-vp9", ".webm", {"crf": "28", "b": "0", "deadline": "realtime", "cpu-used": "8"}))
SIZES = [(72, 128), (96, 96), (120, 90), (64, 112), (144, 108), (80, 60)]  # (H, W)
SS = 4  # supersampling factor


def outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon points (supersampled pixels) of a square or an apex-up triangle; None for a circle."""
    if shape == "circle":
        return None
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)] if shape == "square" else [(0, -1.1), (1, 0.8), (-1, 0.8)]
    c, s = np.cos(angle), np.sin(angle)
    return [((cx + r * (c * x - s * y)) * SS, (cy + r * (s * x + c * y)) * SS) for x, y in corners]


def draw(canvas: Image.Image, shape: str, colour, cx: float, cy: float, r: float, angle: float) -> None:
    pen = ImageDraw.Draw(canvas)
    points = outline(shape, cx, cy, r, angle)
    if points is None:
        pen.ellipse([(cx - r) * SS, (cy - r) * SS, (cx + r) * SS, (cy + r) * SS], fill=colour)
    else:
        pen.polygon(points, fill=colour)


def clip_frames(rng: np.random.Generator, colour: str, shape: str, direction: str) -> np.ndarray:
    h, w = SIZES[rng.integers(len(SIZES))]
    n = int(rng.integers(20, 37))
    side = min(h, w)
    r = rng.uniform(0.10, 0.16) * side  # the object spans 20-32% of the short side
    angle = rng.uniform(-0.2, 0.2)
    rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, 3), 0, 255))
    # a straight path through the middle 80% of the centred square, at constant speed
    lo, hi = 0.1 * side + r, 0.9 * side - r
    span = rng.uniform(0.7, 1.0) * (hi - lo)
    a = rng.uniform(lo, hi - span)
    along = (a, a + span) if direction in ("right", "down") else (a + span, a)
    cross = rng.uniform(lo, hi)
    x0, y0 = (w - side) / 2, (h - side) / 2
    level = rng.uniform(8, 45)
    gradient = np.linspace(0, rng.uniform(-15, 25), h)[:, None, None]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        pos = along[0] + (along[1] - along[0]) * t / (n - 1)
        cx, cy = (x0 + pos, y0 + cross) if direction in ("left", "right") else (x0 + cross, y0 + pos)
        canvas = Image.new("RGB", (w * SS, h * SS), (0, 0, 0))
        mask = Image.new("L", (w * SS, h * SS), 0)
        draw(canvas, shape, rgb, cx, cy, r, angle)
        draw(mask, shape, 255, cx, cy, r, angle)
        # on a black canvas the box-filtered colour is already colour x coverage
        fg = np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.float32)
        alpha = np.asarray(mask.resize((w, h), Image.BOX), dtype=np.float32)[..., None] / 255
        back = level + gradient + rng.normal(0, 6, (h, w, 3))
        speckle = rng.random((h, w, 1)) < 0.004
        frame = back * (1 - alpha) + fg
        frames[t] = np.clip(np.where(speckle, 255, frame), 0, 255).astype(np.uint8)
    return frames


def encode(path: Path, frames: np.ndarray, codec: str, options: dict, fps: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = dict(options)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def render_check_set(out_dir: Path, seed: int = 0, repeats: int = 1) -> Path:
    """OUT/eval.jsonl and OUT/videos/: `repeats` clips per caption (48 captions), every codec in turn."""
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 77])
    rows = []
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS)) * repeats
    for i, (colour, shape, direction) in enumerate(combos):
        codec, suffix, options = CODECS[i % len(CODECS)]
        rel = f"videos/check_{i:04d}{suffix}"
        encode(out_dir / rel, clip_frames(rng, colour, shape, direction), codec, options, int(rng.choice([12, 20, 30])))
        rows.append({"video": rel, "caption": f"a {colour} {shape} moves {direction}"})
    (out_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out_dir / "eval.jsonl"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="clips per caption")
    args = parser.parse_args()
    print(render_check_set(args.out_dir, args.seed, args.repeats))
