"""Tests for the synthetic shapes dataset and the annotation loader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from toolchain.data.annotations import Sample, load_jsonl
from toolchain.data.synth import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    blank_frame,
    caption,
    draw_shape,
    render_clip,
    synthesize,
)
from toolchain.data.video import decode_video
from toolchain.errors import DataError

ALL_CAPTIONS = {caption(c, s, d) for c, s, d in itertools.product(COLORS, SHAPES, DIRECTIONS)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    calls = []
    info = synthesize(out, videos=8, seed=3, progress=lambda done, total: calls.append((done, total)))
    return out, info, calls


def parse_caption(text: str) -> tuple[str, str, str]:
    _, color, shape, _, direction = text.split()
    return color, shape, direction


def centroids(frames: np.ndarray, color: str) -> np.ndarray:
    """[N, 2] (x, y) centroid of the pixels close to `color` in each frame."""
    dist = np.abs(frames.astype(np.int16) - np.array(COLORS[color], dtype=np.int16)).sum(-1)
    out = []
    for mask in dist < 90:
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0, "shape not visible in a frame"
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def test_caption_text():
    assert caption("red", "circle", "left") == "a red circle moves left"
    assert list(COLORS) == ["red", "green", "blue", "yellow"]


def test_synthesize_counts_and_files(dataset):
    out, info, _ = dataset
    assert info == {"train": 8, "eval": 48, "dir": str(out)}
    train = (out / "train.jsonl").read_text().splitlines()
    evals = (out / "eval.jsonl").read_text().splitlines()
    assert len(train) == 8 and len(evals) == 48
    first = json.loads(train[0])
    assert set(first) == {"video", "caption"} and first["video"] == "videos/train_0000.mp4"
    names = sorted(p.name for p in (out / "videos").iterdir())
    assert names == sorted([f"train_{i:04d}.mp4" for i in range(8)] + [f"eval_{i:04d}.mp4" for i in range(48)])
    assert not list(out.glob(".tmp-*")), "temp files left behind"


def test_progress_reports_every_clip(dataset):
    _, _, calls = dataset
    assert calls == [(i, 56) for i in range(1, 57)]


def test_eval_captions_unique_and_complete(dataset):
    out, _, _ = dataset
    captions = [s.caption for s in load_jsonl(out / "eval.jsonl")]
    assert len(captions) == len(set(captions)) == 48
    assert set(captions) == ALL_CAPTIONS


def test_load_jsonl_resolves_against_its_folder(dataset):
    out, _, _ = dataset
    samples = load_jsonl(out / "train.jsonl")
    assert all(isinstance(s, Sample) and s.video.is_file() for s in samples)
    assert samples[0].video == out / "videos" / "train_0000.mp4"
    assert all(s.caption in ALL_CAPTIONS for s in samples)


def test_videos_decode_non_square_with_varying_lengths(dataset):
    out, _, _ = dataset
    shapes = [decode_video(s.video).shape for s in load_jsonl(out / "eval.jsonl")]
    for n, h, w, c in shapes:
        assert c == 3 and h != w
        assert 16 <= n <= 40 and 48 <= h <= 88 and 64 <= w <= 112
    assert len({n for n, *_ in shapes}) > 3
    assert len({(h, w) for _, h, w, _ in shapes}) > 3


def test_shape_moves_in_captioned_direction(dataset):
    out, _, _ = dataset
    for sample in load_jsonl(out / "eval.jsonl"):
        color, _, direction = parse_caption(sample.caption)
        frames = decode_video(sample.video)
        xy = centroids(frames, color)
        assert np.abs(xy[:3] - xy[0]).max() < 0.5, f"{sample.video} not static at the start"
        assert np.abs(xy[-2:] - xy[-1]).max() < 0.5, f"{sample.video} not static at the end"
        dx, dy = xy[-1] - xy[0]
        _, h, w, _ = frames.shape
        side = min(h, w)
        expected = {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction] / side
        across = abs(dy) if direction in ("left", "right") else abs(dx)
        assert 0.3 < expected < 0.55, f"{sample.video}: moved {expected:.2f} of the centre square"
        assert across < 1.0
        # the whole path stays inside the centred square a CLIP centre crop keeps
        lo = np.array([(w - side) / 2, (h - side) / 2])
        assert (xy >= lo).all() and (xy <= lo + side).all(), f"{sample.video} leaves the centre square"


def decoded_split(out, split, limit=6):
    return [decode_video(s.video) for s in load_jsonl(out / f"{split}.jsonl")[:limit]]


def test_same_seed_same_content_different_seed_differs(tmp_path):
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        synthesize(tmp_path / name, videos=3, seed=seed)
    for split in ("train", "eval"):
        va, vb, vc = (decoded_split(tmp_path / name, split) for name in "abc")
        assert all(np.array_equal(x, y) for x, y in zip(va, vb, strict=True))
        assert not all(x.shape == z.shape and np.array_equal(x, z) for x, z in zip(va, vc))
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()


def test_render_clip_sizes_over_many_seeds():
    for seed in range(40):
        n, h, w, _ = render_clip(np.random.default_rng(seed), "blue", "square", "up").shape
        assert h % 2 == 0 and w % 2 == 0 and h != w
        assert 16 <= n <= 40 and 48 <= h <= 88 and 64 <= w <= 112


def visited_range(direction: str, seed: int) -> tuple[float, float]:
    """Visited interval along the motion axis, as fractions of the frame, from raw frames."""
    frames = render_clip(np.random.default_rng(seed), "red", "circle", direction)
    xy = centroids(frames, "red")
    axis = 0 if direction in ("left", "right") else 1
    length = frames.shape[2 - axis]
    return xy[:, axis].min() / length, xy[:, axis].max() / length


@pytest.mark.parametrize("pair", [("left", "right"), ("up", "down")])
def test_start_is_random_so_only_order_gives_direction(pair):
    ranges = {d: np.array([visited_range(d, seed) for seed in range(60)]) for d in pair}
    for d in pair:
        lows = ranges[d][:, 0]
        assert lows.std() > 0.03, f"{d}: start is not random"
    # The visited intervals have the same distribution whichever way the shape moves.
    a, b = (ranges[d] for d in pair)
    assert np.abs(a.mean(0) - b.mean(0)).max() < 0.06


def test_draw_shape_circle_square_triangle():
    frame = blank_frame(60, 80)
    assert frame.shape == (60, 80, 3) and frame.dtype == np.uint8 and (frame == 30).all()
    areas = {}
    for shape in SHAPES:
        f = blank_frame(60, 80)
        draw_shape(f, shape, (220, 40, 40), (40.0, 30.0), 20)
        mask = (f == (220, 40, 40)).all(-1)
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() - 40) < 1 and 20 <= ys.mean() <= 36
        areas[shape] = mask.sum()
        if shape == "triangle":
            widths = mask.sum(1)[ys.min():ys.max() + 1]
            assert widths[0] < widths[-1], "triangle should point up"
    assert areas["triangle"] < areas["circle"] < areas["square"]
    assert abs(areas["circle"] - np.pi * 100) < 20


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"video": "a.mp4", "caption": "x"}\n{not json}\n', "line 2"),
        ('{"video": "a.mp4", "caption": "x"}\n\n{"video": "b.mp4"}\n', "line 3: missing key 'caption'"),
        ('{"video": 3, "caption": "x"}\n', "line 1: 'video' must be a string"),
        ('["a.mp4", "x"]\n', "line 1: expected a JSON object"),
    ],
)
def test_load_jsonl_bad_line_names_file_and_line(tmp_path, content, problem):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert problem in str(err.value) and str(path) in str(err.value)


def test_load_jsonl_missing_empty_and_absolute(tmp_path):
    with pytest.raises(DataError, match="vqtool data synth"):
        load_jsonl(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="no samples"):
        load_jsonl(empty)
    ok = tmp_path / "sub" / "ok.jsonl"
    ok.parent.mkdir()
    ok.write_text('\n{"video": "/abs/v.mp4", "caption": "c"}\n{"video": "rel.mp4", "caption": "d"}\n')
    assert load_jsonl(ok) == [Sample(Path("/abs/v.mp4"), "c"), Sample(tmp_path / "sub" / "rel.mp4", "d")]
