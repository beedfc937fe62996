"""`vqtool infer` on video files the tool did not make: other codecs, odd sizes, 1 to 100 frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_K
from export.runtime import VideoTextRuntime
from toolchain.data.synth import write_video
from toolchain.data.video import decode_video
from toolchain.frames import uniform_indices

TEXTS = ["a red circle moves left", "a blue square moves up", "something else entirely"]
# (file name, codec, frames, height, width)
FOREIGN = [
    ("one_frame.mp4", "mpeg4", 1, 50, 90),
    ("seven_frames.webm", "libvpx-vp9", 7, 90, 50),
    ("hundred_frames.mp4", "mpeg4", 100, 50, 90),
    ("odd_size.mp4", "mpeg4", 3, 51, 91),
    ("odd_size.webm", "libvpx-vp9", 2, 33, 47),
]


def moving_square(n: int, h: int, w: int) -> np.ndarray:
    frames = np.full((n, h, w, 3), 30, dtype=np.uint8)
    side = max(4, min(h, w) // 4)
    for t in range(n):
        x = (t * 3) % max(1, w - side)
        frames[t, h // 3 : h // 3 + side, x : x + side] = (220, 40, 40)
    return frames


@pytest.fixture(scope="module")
def foreign_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    paths = []
    for name, codec, n, h, w in FOREIGN:
        path = folder / name
        write_video(path, moving_square(n, h, w), codec=codec)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def infer_json(run_cli, tiny_export, foreign_videos):
    args = ["infer", tiny_export, "--json", "--threads", "1"]
    for v in foreign_videos:
        args += ["--video", v]
    for t in TEXTS:
        args += ["--text", t]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def test_infer_json_keys_and_shapes(infer_json, foreign_videos):
    out = infer_json
    assert set(out) >= {"videos", "texts", "scores", "frame_indices", "variant", "providers"}
    assert out["videos"] == [str(v) for v in foreign_videos]
    assert out["texts"] == TEXTS
    assert out["variant"] == "fp32"
    assert "CPUExecutionProvider" in out["providers"]
    assert len(out["scores"]) == len(foreign_videos)
    assert all(len(row) == len(TEXTS) for row in out["scores"])
    assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for row in out["scores"] for s in row)
    assert len(out["frame_indices"]) == len(foreign_videos)
    assert all(len(row) == TINY_K for row in out["frame_indices"])


def test_infer_frame_indices_follow_the_selector(infer_json, tiny_export, foreign_videos):
    max_frames = VideoTextRuntime(tiny_export).manifest["frames"]["decode_max_frames"]
    for path, (_, _, n, _, _), got in zip(foreign_videos, FOREIGN, infer_json["frame_indices"]):
        decoded = min(n, max_frames)
        assert len(decode_video(path, max_frames)) == decoded
        assert got == uniform_indices(decoded, TINY_K).tolist(), path.name
    assert infer_json["frame_indices"][0] == [0] * TINY_K  # the 1-frame clip repeats its only frame


def test_infer_scores_match_the_runtime(infer_json, tiny_export, foreign_videos):
    rt = VideoTextRuntime(tiny_export, variant="fp32")
    expected = rt.scores(foreign_videos, TEXTS)
    assert np.abs(np.array(infer_json["scores"]) - expected).max() < 1e-5


def test_infer_int8_table_output(run_cli, tiny_export, foreign_videos):
    proc = run_cli("infer", tiny_export, "--variant", "int8", "--video", foreign_videos[1],
                   "--text", TEXTS[0], "--text", TEXTS[1])
    assert proc.returncode == 0, proc.stderr
    assert TEXTS[0] in proc.stdout and foreign_videos[1].name in proc.stdout


def test_infer_unreadable_video_is_a_clean_error(run_cli, tiny_export, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video " * 20)
    proc = run_cli("infer", tiny_export, "--video", bad, "--text", "a red circle", "--json")
    assert proc.returncode == 2
    assert "broken.mp4" in proc.stderr and "cannot read video" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_infer_missing_variant_is_a_clean_error(run_cli, tiny_export, foreign_videos):
    proc = run_cli("infer", tiny_export, "--variant", "int4", "--video", foreign_videos[0], "--text", "x")
    assert proc.returncode == 2
    assert "int4" in proc.stderr and "fp32" in proc.stderr and "Traceback" not in proc.stderr
