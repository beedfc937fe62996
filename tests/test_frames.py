"""Tests for the frame selector: integer segment centres, shapes, dtypes and edge cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.data.video import frame_indices
from toolchain.errors import DataError
from toolchain.frames import gather_frames, select_frames, uniform_indices


def clip(n: int, h: int = 6, w: int = 5, batch: int | None = None) -> torch.Tensor:
    shape = (n, h, w, 3) if batch is None else (batch, n, h, w, 3)
    return torch.randint(0, 256, shape, dtype=torch.uint8)


def test_known_values():
    assert uniform_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert uniform_indices(10, 3).tolist() == [1, 5, 8]
    assert uniform_indices(1, 3).tolist() == [0, 0, 0]
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_select_frames_single_clip():
    idx = select_frames(clip(20), 8)
    assert idx.dtype == torch.int64 and idx.shape == (8,)
    assert idx.tolist() == sorted(idx.tolist()) and len(set(idx.tolist())) == 8
    assert 0 <= idx.min() and idx.max() < 20


def test_select_frames_repeats_when_clip_is_short():
    idx = select_frames(clip(3), 8).tolist()
    assert len(idx) == 8 and idx == sorted(idx)
    assert set(idx) == {0, 1, 2}


def test_one_frame_clip():
    assert select_frames(clip(1), 5).tolist() == [0] * 5


def test_batched_gives_b_by_k():
    frames = clip(13, batch=3)
    idx = select_frames(frames, 4)
    assert idx.shape == (3, 4)
    assert all(row == uniform_indices(13, 4).tolist() for row in idx.tolist())
    picked = gather_frames(frames, idx)
    assert picked.shape == (3, 4, 6, 5, 3) and picked.dtype == torch.uint8
    assert torch.equal(picked[1, 2], frames[1, idx[1, 2]])


def test_empty_clip_is_a_data_error():
    with pytest.raises(DataError, match="0 frames"):
        select_frames(clip(0), 4)
    with pytest.raises(DataError, match="0 frames"):
        select_frames(clip(0, batch=2), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.int8])
def test_uint8_required(dtype):
    with pytest.raises(DataError, match="uint8"):
        select_frames(clip(5).to(dtype), 2)


def test_unknown_selector():
    with pytest.raises(DataError, match="uniform"):
        select_frames(clip(5), 2, selector="random")


def test_depends_only_on_frame_count():
    a, b = clip(17, h=4, w=9), clip(17, h=31, w=2)
    assert torch.equal(select_frames(a, 6), select_frames(b, 6))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 500), k=st.integers(1, 64))
def test_uniform_indices_properties(n, k):
    idx = uniform_indices(n, k).tolist()
    assert len(idx) == k
    assert idx == sorted(idx)
    assert all(0 <= i < n for i in idx)
    assert idx == [(2 * i + 1) * n // (2 * k) for i in range(k)]
    if n >= k:
        assert len(set(idx)) == k
    else:
        # Short clips: frames repeat, and none is left out.
        assert set(idx) == set(range(n))
    if n > k:
        # The decoder's subsampling uses the same segment centres.
        assert idx == frame_indices(n, k)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 12), b=st.integers(1, 3))
def test_select_frames_matches_uniform_indices(n, k, b):
    idx = select_frames(torch.zeros((b, n, 2, 2, 3), dtype=torch.uint8), k)
    assert idx.shape == (b, k)
    assert torch.equal(idx[0], uniform_indices(n, k))
