"""The motion-aware selectors: contract properties, ±1 LSB stability, and torch == ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.frames import SELECTORS, motion_energy, select_frames, uniform_indices

settings.register_profile("selectors", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_clip(seed: int, n: int, h: int, w: int, b: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, h, w, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("selector", SELECTORS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), k=st.integers(1, 12),
       h=st.integers(1, 23), w=st.integers(1, 23))
def test_contract(selector, seed, n, k, h, w):
    frames = random_clip(seed, n, h, w, b=2)
    idx = select_frames(frames, k, selector)
    assert idx.shape == (2, k) and idx.dtype == torch.int64
    for row in idx.tolist():
        assert row == sorted(row) and all(0 <= i < n for i in row)
        if n >= k:
            assert len(set(row)) == k
    assert torch.equal(idx, select_frames(frames, k, selector))  # deterministic


def gray_clip(levels: np.ndarray) -> torch.Tensor:
    """Grey frames from per-cell levels; grey luma equals the level exactly (77+150+29 = 256)."""
    arr = np.repeat(levels[..., None], 3, axis=-1).astype(np.uint8)
    return torch.from_numpy(arr)[None]


@pytest.mark.parametrize("selector", ["motion", "motion-uniform"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 24), k=st.integers(1, 8))
def test_plus_minus_one_lsb_noise_does_not_move_the_choice(selector, seed, n, k):
    rng = np.random.default_rng(seed)
    # Levels at the centre of each 4-level luma bucket (4m + 2): ±1 per channel stays in the bucket.
    levels = rng.integers(0, 63, size=(n, 16, 16)) * 4 + 2
    levels = np.kron(levels, np.ones((2, 3), dtype=np.int64))  # 32x48 frames
    clean = gray_clip(levels)
    noise = torch.from_numpy(rng.integers(-1, 2, size=clean.shape)).to(torch.int16)
    noisy = (clean.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)
    assert torch.equal(motion_energy(clean), motion_energy(noisy))
    assert torch.equal(select_frames(clean, k, selector), select_frames(noisy, k, selector))


def moving_square_clip(n: int = 40, window=(24, 30)) -> torch.Tensor:
    """A square that is still except during `window`, where it jumps a few pixels per frame."""
    frames = np.full((n, 48, 64, 3), 30, dtype=np.uint8)
    x = 8
    for t in range(n):
        if window[0] <= t < window[1]:
            x += 6
        frames[t, 16:32, x : x + 12] = (220, 40, 40)
    return torch.from_numpy(frames)[None]


def test_motion_selectors_look_where_things_move():
    clip = moving_square_clip()
    energy = motion_energy(clip)[0]
    assert energy[:24].sum() == 0 and energy[24:30].min() > 0 and energy[30:].sum() == 0
    in_window = lambda idx: sum(24 <= i < 30 for i in idx[0].tolist())  # noqa: E731
    uni = in_window(select_frames(clip, 4, "uniform"))
    assert in_window(select_frames(clip, 4, "motion-uniform")) > uni
    assert in_window(select_frames(clip, 4, "motion")) >= uni
    # motion: in each segment the frame with the most motion, ties to the earliest
    assert select_frames(clip, 4, "motion")[0].tolist() == [0, 10, 25, 30]


def test_still_clip_gives_the_uniform_choice():
    still = torch.full((1, 17, 8, 8, 3), 90, dtype=torch.uint8)
    assert select_frames(still, 5, "motion-uniform")[0].tolist() == uniform_indices(17, 5).tolist()
    assert select_frames(still, 5, "motion")[0].tolist() == [0, 3, 6, 10, 13]  # segment starts


class Selector(torch.nn.Module):
    def __init__(self, selector: str, k: int):
        super().__init__()
        self.selector, self.k = selector, k

    def forward(self, frames):
        return select_frames(frames, self.k, self.selector)


@pytest.fixture(scope="module", params=SELECTORS)
def exported(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("sel") / f"{request.param}.onnx"
    dims = {i: torch.export.Dim(n, min=1, max=4096) for i, n in enumerate(["b", "n", "h", "w"])}
    example = random_clip(0, 12, 20, 30, b=2)
    torch.onnx.export(Selector(request.param, 5), (example,), str(path), dynamo=True,
                      input_names=["frames"], dynamic_shapes={"frames": dims}, verbose=False)
    return request.param, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), n=st.integers(1, 33), h=st.integers(1, 41),
       w=st.integers(1, 41))
def test_onnx_runtime_picks_the_same_frames(exported, seed, b, n, h, w):
    selector, session = exported
    frames = random_clip(seed, n, h, w, b=b)
    got = session.run(None, {"frames": frames.numpy()})[0]
    assert np.array_equal(got, select_frames(frames, 5, selector).numpy())
