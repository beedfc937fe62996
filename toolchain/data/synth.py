"""The synthetic "shapes" dataset: coloured shapes moving one way, rendered to real video files."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from toolchain.data.synth_wide import centred_segment, render_wide_clip

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUND = 30


# Low CRF keeps the flat colours close to their RGB values after yuv420p.
_CODEC_OPTIONS = {
    "libx264": {"crf": "12", "preset": "ultrafast"},
    "mpeg4": {"b": "1M"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}
VARIETIES = ("plain", "wide")  # plain: the original flat renderer; wide: synth_wide.py


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moves {direction}"


def appearance(caption_text: str) -> str | None:
    """'a red circle moves left' -> 'a red circle' (the caption less its direction); None if off-grammar."""
    words = caption_text.split()
    if len(words) == 5 and words[3] == "moves" and words[4] in DIRECTIONS:
        return " ".join(words[:3])
    return None


REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reversed_caption(caption_text: str) -> str | None:
    """'a red circle moves left' -> 'a red circle moves right'; None if off-grammar."""
    if appearance(caption_text) is None:
        return None
    words = caption_text.split()
    return " ".join(words[:4] + [REVERSED[words[4]]])


QUESTIONS = {  # type -> question; the answer is the caption's word of that kind
    "colour": "what colour is the shape ?",
    "shape": "what shape is it ?",
    "direction": "which way does the {color} {shape} move ?",
}


def qa_rows(video: str, caption_text: str) -> list[dict]:
    """The question-answer rows of one clip ('a red circle moves left': colour, shape and direction)."""
    _, color, shape, _, direction = caption_text.split()
    answers = {"colour": color, "shape": shape, "direction": direction}
    return [{"video": video, "question": q.format(color=color, shape=shape), "answer": answers[t], "type": t}
            for t, q in QUESTIONS.items()]


def write_qa_files(out_dir: Path) -> None:
    """SPLIT_qa.jsonl beside each SPLIT.jsonl of a shapes set: its clips' question-answer rows."""
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (Path(out_dir) / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        _write_jsonl(Path(out_dir) / f"{split}_qa.jsonl", [q for r in rows for q in qa_rows(r["video"], r["caption"])])


def blank_frame(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), BACKGROUND, dtype=np.uint8)


def shape_mask(h: int, w: int, shape: str, center_xy: tuple[float, float], size: int) -> np.ndarray:
    """Boolean HxW mask of a filled shape whose bounding box is `size` pixels wide."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres
    dx, dy = xx - center_xy[0], yy - center_xy[1]
    r = size / 2
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        # Isosceles, apex up: half-width grows from 0 at the top to r at the base.
        depth = dy + r
        return (depth >= 0) & (dy <= r) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def draw_shape(frame: np.ndarray, shape: str, color_rgb, center_xy: tuple[float, float], size: int) -> None:
    h, w = frame.shape[:2]
    frame[shape_mask(h, w, shape, center_xy, size)] = color_rgb


def _clip_size(rng: np.random.Generator) -> tuple[int, int]:
    while True:
        w = 2 * int(rng.integers(32, 57))
        h = 2 * int(rng.integers(24, 45))
        if w != h:
            return h, w


def _motion_endpoints(rng: np.random.Generator, h: int, w: int, size: int, direction: str):
    """Start and end centres of a straight move inside the frame's centred square.

    The action stays where a CLIP-style centre crop (side min(H, W)) keeps it, as in footage that
    frames its subject; the margins of a wide or tall frame only ever show background.
    """
    side = min(h, w)
    return centred_segment(rng, h, w, size / 2, rng.uniform(0.35, 0.5) * side, direction)


def render_clip(rng: np.random.Generator, color: str, shape: str, direction: str) -> np.ndarray:
    h, w = _clip_size(rng)
    n = int(rng.integers(16, 41))
    size = min(h, w) // 4
    start, end = _motion_endpoints(rng, h, w, size, direction)
    move_start = rng.uniform(0.2, 0.35) * n
    move_len = rng.uniform(0.3, 0.5) * n
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        p = min(max((t - move_start) / move_len, 0.0), 1.0)
        center = (start[0] + p * (end[0] - start[0]), start[1] + p * (end[1] - start[1]))
        frames[t] = blank_frame(h, w)
        draw_shape(frames[t], shape, COLORS[color], center, size)
    return frames


def _temp_path(path: Path) -> Path:
    # Keep the extension so the container format is guessed from the name.
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}{path.suffix}")


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264", gop: int | None = None) -> None:
    """Encode uint8 RGB frames [N,H,W,3] to a real video file; `gop` sets the keyframe interval."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.options = _CODEC_OPTIONS.get(codec, {})
            if gop is not None:
                stream.codec_context.gop_size = gop
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = _temp_path(path)
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _train_specs(rng: np.random.Generator, videos: int) -> list[tuple[str, str, str]]:
    colors = list(COLORS)
    return [
        (
            colors[rng.integers(len(colors))],
            SHAPES[rng.integers(len(SHAPES))],
            DIRECTIONS[rng.integers(len(DIRECTIONS))],
        )
        for _ in range(videos)
    ]


def _render(rng: np.random.Generator, spec: tuple[str, str, str], variety: str):
    """(frames, fps, codec, file suffix) of one clip of the chosen variety."""
    color, shape, direction = spec
    if variety == "plain":
        return render_clip(rng, color, shape, direction), 10, "libx264", ".mp4"
    clip = render_wide_clip(rng, shape, COLORS[color], direction)
    return clip.frames, clip.fps, clip.codec, clip.suffix


def synthesize(
    out_dir: Path,
    videos: int = 192,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    variety: str = "plain",
) -> dict:
    if variety not in VARIETIES:
        raise ValueError(f"variety {variety!r}: choose one of {', '.join(VARIETIES)}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    train_rng = np.random.default_rng([seed, 0])
    eval_rng = np.random.default_rng([seed, 1])
    splits = {
        "train": (train_rng, _train_specs(train_rng, videos)),
        # One clip per combination, so every eval caption is unique.
        "eval": (eval_rng, list(itertools.product(COLORS, SHAPES, DIRECTIONS))),
    }
    total = sum(len(specs) for _, specs in splits.values())
    done = 0
    for split, (rng, specs) in splits.items():
        rows = []
        for i, spec in enumerate(specs):
            frames, fps, codec, suffix = _render(rng, spec, variety)
            rel = f"videos/{split}_{i:04d}{suffix}"
            write_video(out_dir / rel, frames, fps=fps, codec=codec)
            rows.append({"video": rel, "caption": caption(*spec)})
            done += 1
            if progress is not None:
                progress(done, total)
        _write_jsonl(out_dir / f"{split}.jsonl", rows)
    write_qa_files(out_dir)
    return {"train": videos, "eval": len(splits["eval"][1]), "dir": str(out_dir)}
