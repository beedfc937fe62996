"""The independent check renderer (tests/check_renderer.py): its clips decode, follow the caption, and
its code shares nothing with the training renderers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import av
import numpy as np
import pytest

from check_renderer import COLOURS, render_check_set
from toolchain.data.video import decode_video


@pytest.fixture(scope="module")
def check_set(tmp_path_factory):
    return render_check_set(tmp_path_factory.mktemp("check"), seed=0)


def centroids(frames: np.ndarray, colour: str) -> np.ndarray:
    dist = np.abs(frames.astype(np.int16) - np.array(COLOURS[colour], dtype=np.int16)).sum(-1)
    out = []
    for mask in dist < 80:
        ys, xs = np.nonzero(mask)
        assert len(xs) > 10, "object not visible"
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def test_every_caption_once_and_every_codec(check_set):
    rows = [json.loads(line) for line in check_set.read_text().splitlines()]
    assert len(rows) == 48 == len({r["caption"] for r in rows})
    codecs = set()
    for row in rows:
        with av.open(str(check_set.parent / row["video"])) as container:
            codecs.add(container.streams.video[0].codec_context.name)
    assert codecs == {"h264", "mpeg4", "vp9"}


def test_clips_decode_and_move_the_captioned_way(check_set):
    for row in (json.loads(line) for line in check_set.read_text().splitlines()):
        frames = decode_video(check_set.parent / row["video"])
        assert frames.shape[0] >= 20 and frames.shape[-1] == 3
        _, colour, _, _, direction = row["caption"].split()
        xy = centroids(frames, colour)
        dx, dy = (xy[-1] - xy[0]) / min(frames.shape[1:3])
        along = {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction]
        across = abs(dy) if direction in ("left", "right") else abs(dx)
        assert along > 0.2 and across < 0.05, (row, along, across)


def test_same_seed_same_clips(tmp_path, check_set):
    again = render_check_set(tmp_path / "again", seed=0)
    assert again.read_text() == check_set.read_text()
    for line in again.read_text().splitlines()[:3]:  # one clip of each codec
        video = json.loads(line)["video"]
        assert np.array_equal(decode_video(again.parent / video), decode_video(check_set.parent / video))


def test_shares_no_code_with_the_training_renderers():
    tree = ast.parse((Path(__file__).parent / "check_renderer.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith(("toolchain", "export")) for m in modules), modules
