"""Tests for decode_video: round trips, subsampling, other codecs and every failure as VideoReadError."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolchain.data.synth import render_clip, write_video
from toolchain.data.video import decode_video, frame_indices
from toolchain.errors import VideoReadError


@pytest.fixture(scope="module")
def clip():
    return render_clip(np.random.default_rng(11), "yellow", "triangle", "right")


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, clip)
    return path


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_round_trip_keeps_frames_and_colours(mp4, clip):
    frames = decode_video(mp4)
    assert frames.dtype == np.uint8 and frames.shape == clip.shape
    assert mean_abs_diff(frames, clip) < 2.0
    # Edges blur with chroma subsampling, but the typical shape pixel keeps its colour.
    mask = (clip[0] == (230, 220, 40)).all(-1)
    assert np.abs(np.median(frames[0][mask], axis=0) - (230, 220, 40)).max() < 6


def test_write_video_leaves_no_temp_file(mp4):
    assert [p.name for p in mp4.parent.iterdir()] == ["clip.mp4"]


def test_subsampling_keeps_order_and_count(mp4, clip):
    full = decode_video(mp4)
    sub = decode_video(mp4, max_frames=8)
    assert sub.shape == (8, *clip.shape[1:])
    idx = frame_indices(len(full), 8)
    assert np.array_equal(sub, full[idx])
    assert idx == sorted(set(idx))


def test_max_frames_at_least_length_keeps_all(mp4, clip):
    n = len(clip)
    assert decode_video(mp4, max_frames=n).shape[0] == n
    assert decode_video(mp4, max_frames=n + 50).shape[0] == n


def test_frame_indices_centres():
    assert frame_indices(10, 5) == [1, 3, 5, 7, 9]
    assert frame_indices(4, None) == [0, 1, 2, 3]


@given(n=st.integers(1, 500), k=st.integers(1, 64))
def test_frame_indices_properties(n, k):
    idx = frame_indices(n, k)
    assert len(idx) == min(n, k)
    assert all(0 <= i < n for i in idx)
    assert all(a < b for a, b in zip(idx, idx[1:]))


@pytest.mark.parametrize(
    "codec, name, stored",
    [("mpeg4", "c.mp4", "mpeg4"), ("mpeg4", "c.avi", "mpeg4"), ("libvpx-vp9", "c.webm", "vp9")],
)
def test_other_codecs_decode(tmp_path, clip, codec, name, stored):
    path = tmp_path / name
    write_video(path, clip, codec=codec)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == stored
    frames = decode_video(path)
    assert frames.shape == clip.shape
    assert mean_abs_diff(frames, clip) < 8.0
    assert decode_video(path, max_frames=5).shape[0] == 5


def assert_read_error(path, reason: str | None = None):
    with pytest.raises(VideoReadError) as err:
        decode_video(path)
    assert err.value.path == str(path)
    assert str(path) in str(err.value)
    if reason is not None:
        assert err.value.reason == reason
    return err.value


def test_missing_file(tmp_path):
    assert_read_error(tmp_path / "missing.mp4", "file not found")


def test_directory_is_not_a_file(tmp_path):
    assert_read_error(tmp_path, "file not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert_read_error(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = assert_read_error(path)
    assert err.reason and "Errno" not in err.reason


def test_text_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    assert_read_error(path)


def test_truncated_mp4(tmp_path, mp4):
    path = tmp_path / "half.mp4"
    data = mp4.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = (np.sin(np.arange(800) / 5) * 3000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert_read_error(path, "no video stream")


@pytest.mark.parametrize("codec, name", [("libx264", "c.mp4"), ("libvpx-vp9", "c.webm"), ("mpeg4", "c.avi")])
def test_corrupted_files_give_frames_or_video_read_error(tmp_path, clip, codec, name):
    good = tmp_path / name
    write_video(good, clip, codec=codec)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    errors = 0
    for trial in range(30):
        if trial % 2:
            bad = data[: rng.integers(1, len(data))]
        else:
            noisy = np.frombuffer(data, dtype=np.uint8).copy()
            noisy[rng.integers(len(noisy), size=8)] = rng.integers(256, size=8)
            bad = noisy.tobytes()
        path = tmp_path / f"bad{trial}{good.suffix}"
        path.write_bytes(bad)
        try:
            frames = decode_video(path)
        except VideoReadError:
            errors += 1
        else:
            assert frames.dtype == np.uint8 and frames.ndim == 4 and len(frames) > 0
    assert errors > 0
