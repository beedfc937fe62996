"""The wide shapes distribution (`vqtool data synth --variety wide`): per-clip variety, deterministic per seed."""

from __future__ import annotations

import json
from collections import Counter

import av
import numpy as np
import pytest

from toolchain.data.synth import COLORS, synthesize
from toolchain.data.synth_wide import SIZE_FRACTION, frame_size, path, render_wide_clip, shape_mask
from toolchain.data.video import decode_video
from toolchain.errors import RecipeError
from toolchain.recipe import validate_recipe


@pytest.fixture(scope="module")
def wide_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide")
    synthesize(out, videos=6, seed=5, variety="wide")
    return out


def rows(out, split):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_same_seed_same_frames_other_seed_differs():
    a, b, c = (render_wide_clip(np.random.default_rng(s), "circle", COLORS["red"], "left") for s in (4, 4, 5))
    assert np.array_equal(a.frames, b.frames) and (a.fps, a.codec) == (b.fps, b.codec)
    assert a.frames.shape != c.frames.shape or not np.array_equal(a.frames, c.frames)


def test_clips_vary_in_size_rate_length_codec_and_background():
    clips = [render_wide_clip(np.random.default_rng(s), "square", COLORS["blue"], "up") for s in range(60)]
    shapes = [c.frames.shape for c in clips]
    assert all(h % 2 == 0 and w % 2 == 0 and 48 <= min(h, w) <= 112 for _, h, w, _ in shapes)
    assert any(h > w for _, h, w, _ in shapes) and any(w > 1.5 * h for _, h, w, _ in shapes)  # portrait and wide
    assert len({n for n, *_ in shapes}) > 10 and len({c.fps for c in clips}) >= 5
    assert {c.codec for c in clips} == {"libx264", "mpeg4", "libvpx-vp9"}
    corners = [float(c.frames[0, :4, :4].mean()) for c in clips]  # background level, far from the object
    assert max(corners) - min(corners) > 40
    noise = [float(c.frames[0, :8, :8].astype(float).std()) for c in clips]
    assert max(noise) > 2.0 and min(noise) < max(noise) / 2  # some clips noisy, some clean


def test_object_size_spans_the_documented_range():
    fractions = []
    for seed in range(80):
        rng = np.random.default_rng(seed)
        h, w = frame_size(rng)
        size = rng.uniform(*SIZE_FRACTION) * min(h, w)
        mask = shape_mask("square", h, w, (w / 2, h / 2), size, 1.0, 0.0, 0.0)
        fractions.append(np.sqrt(mask.sum()) / min(h, w))
    assert min(fractions) < 0.18 and max(fractions) > 0.37
    assert all(0.13 < f < 0.42 for f in fractions)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_proportions_vary_but_the_kind_of_shape_stays(shape):
    """Area over bounding-box area separates the kinds whatever the stretch: ellipse ~pi/4, rectangle ~1,
    triangle ~1/2 (tilt 0, so the box is the shape's own)."""
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    for aspect in (0.8, 1.0, 1.25):
        for apex in (-0.3, 0.0, 0.3):
            mask = shape_mask(shape, 120, 120, (60, 60), 50, aspect, 0.0, apex)
            ys, xs = np.nonzero(mask)
            box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
            assert abs(mask.sum() / box - fill) < 0.06, (shape, aspect, apex)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_path_goes_the_captioned_way_inside_the_centred_square(direction):
    sign = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        h, w = frame_size(rng)
        size = rng.uniform(*SIZE_FRACTION) * min(h, w)
        (x0, y0), (x1, y1) = path(rng, h, w, size, direction)
        moved = np.array([x1 - x0, y1 - y0]) / min(h, w)
        assert float(moved @ np.array(sign)) > 0.1 and float(abs(moved @ np.array(sign[::-1]))) == 0
        side = min(h, w)
        for x, y in ((x0, y0), (x1, y1)):
            assert (w - side) / 2 + size / 2 <= x <= (w + side) / 2 - size / 2
            assert (h - side) / 2 + size / 2 <= y <= (h + side) / 2 - size / 2


def test_wide_set_decodes_with_every_codec(wide_set):
    codecs, sizes = Counter(), set()
    for split, count in (("train", 6), ("eval", 48)):
        listed = rows(wide_set, split)
        assert len(listed) == count
        for row in listed:
            with av.open(str(wide_set / row["video"])) as container:
                codecs[container.streams.video[0].codec_context.name] += 1
            frames = decode_video(wide_set / row["video"])
            sizes.add(frames.shape[1:3])
            assert frames.shape[0] >= 16 and frames.dtype == np.uint8
    assert set(codecs) == {"h264", "mpeg4", "vp9"} and len(sizes) > 20
    assert {r["video"].rsplit(".", 1)[1] for r in rows(wide_set, "eval")} == {"mp4", "webm"}
    assert (wide_set / "train_qa.jsonl").is_file()


def test_plain_stays_the_default_and_bad_variety_is_named(tmp_path, run_cli):
    synthesize(tmp_path / "plain", videos=2, seed=0)
    assert all(r["video"].endswith(".mp4") for r in rows(tmp_path / "plain", "eval"))
    with pytest.raises(ValueError, match="plain, wide"):
        synthesize(tmp_path / "x", videos=1, variety="fancy")
    result = run_cli("data", "synth", tmp_path / "y", "--variety", "fancy")
    assert result.returncode == 2 and "--variety 'fancy'" in result.stderr and "Traceback" not in result.stderr


def test_recipe_key_synth_variety():
    data = {"train": "a/train.jsonl", "eval": "a/eval.jsonl"}
    assert validate_recipe({"data": {**data, "synth_variety": "wide"}}).data.synth_variety == "wide"
    assert validate_recipe({"data": data}).data.synth_variety == "plain"
    with pytest.raises(RecipeError, match="synth_variety"):
        validate_recipe({"data": {**data, "synth_variety": "fancy"}})
