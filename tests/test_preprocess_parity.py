"""The fused preprocessing uses the checkpoint's own processor constants and matches the Hugging Face
image processor's pixels (CLIPImageProcessor) on frames of odd aspect ratios, in PyTorch and in ONNX.

Tolerance, in grey levels of the 0-255 input (|diff| * std * 255), per frame: mean <= 0.5, 99th and
99.9th percentile <= 1.5, at most 0.02% of values more than 5 levels off, and max <= 16. Measured
(both checkpoints, the five sizes, torch and ONNX alike): mean 0.24-0.29, p99 0.75-0.87, p99.9
0.90-0.99, max 1.0-14.5; values beyond 5 levels: none on three sizes, at most 14 of 150,528 (the
300x140 frame, upscaled 1.6x, where the max of 14.5 sits). The geometry (shortest-side resize with HF's integer
rounding, centre crop) is the same; what differs is the filter implementation: PIL's bicubic rounds
to uint8 after each of its two separable passes, torch's antialiased bicubic keeps floats, and the
two disagree most where a small frame is upscaled across a sharp edge.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolchain.data.synth import COLORS, draw_shape
from toolchain.models.build import base_info
from toolchain.models.families import save_tiny_base, write_processor
from toolchain.models.preprocess import preprocess_frames

SIZES = [(97, 251), (300, 140), (480, 854), (33, 61), (720, 405)]
MEAN_TOL, P99_TOL, P999_TOL, MAX_TOL = 0.5, 1.5, 1.5, 16.0  # grey levels
FAR_LEVELS, FAR_SHARE = 5.0, 2e-4  # at most 0.02% of values more than 5 grey levels off


def odd_frame(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour field plus a sharp-edged shape: both kinds of content a camera gives."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (3, 6, 8)).astype(np.float32))[None]
    field = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 255)
    frame = field[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    draw_shape(frame, "circle", COLORS["red"], (w / 2, h / 2), min(h, w) // 3)
    return frame


@pytest.fixture(scope="module", params=[(224, 224), (256, 224)], ids=["clip-224", "resize256-crop224"])
def checkpoint(request, tmp_path_factory):
    """A saved tiny checkpoint whose processor resizes the shortest side to `short` and crops `crop`."""
    short, crop = request.param
    out = save_tiny_base("clip", tmp_path_factory.mktemp("base"), image_size=crop)
    write_processor(out, crop, short, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return out


def hf_pixels(folder, frame):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(str(folder))(images=[frame], return_tensors="np")["pixel_values"][0]


def grey_levels(diff: np.ndarray, info) -> np.ndarray:
    return np.abs(diff) * np.array(info.std)[:, None, None] * 255


def ours(info, frames: torch.Tensor) -> torch.Tensor:
    return preprocess_frames(frames, info.image_size, info.mean, info.std, info.resize_shortest,
                             info.rescale, info.resample)


def test_constants_come_from_the_checkpoint(checkpoint):
    info = base_info(str(checkpoint))
    assert info.mean == (0.5, 0.4, 0.3) and info.std == (0.2, 0.25, 0.3)
    assert info.resize_shortest in (224, 256) and info.image_size == 224 and info.resample == "bicubic"


def test_fused_pixels_match_the_hf_processor(checkpoint, tmp_path):
    import onnxruntime as ort

    info = base_info(str(checkpoint))

    class Pre(torch.nn.Module):
        def forward(self, frames):
            return ours(info, frames)

    example = torch.randint(0, 256, (1, 2, 48, 64, 3), dtype=torch.uint8)
    dim = lambda n: torch.export.Dim(n, min=1, max=4096)  # noqa: E731
    torch.onnx.export(Pre(), (example,), str(tmp_path / "pre.onnx"), dynamo=True, opset_version=18,
                      input_names=["frames"], dynamic_shapes={"frames": {2: dim("h"), 3: dim("w")}})
    session = ort.InferenceSession(str(tmp_path / "pre.onnx"), providers=["CPUExecutionProvider"])
    for i, (h, w) in enumerate(SIZES):
        frame = odd_frame(h, w, i)
        ref = hf_pixels(checkpoint, frame)
        clip = np.stack([frame, frame])[None]
        torch_px = ours(info, torch.from_numpy(clip))[0, 0].numpy()
        onnx_px = session.run(None, {"frames": clip})[0][0, 0]
        for name, px in (("torch", torch_px), ("onnx", onnx_px)):
            diff = grey_levels(px - ref, info)
            assert px.shape == ref.shape == (3, 224, 224)
            stats = (diff.mean(), np.percentile(diff, 99), np.percentile(diff, 99.9), diff.max(), (diff > FAR_LEVELS).mean())
            assert stats[0] <= MEAN_TOL and stats[1] <= P99_TOL and stats[2] <= P999_TOL, (name, (h, w), stats)
            assert stats[3] <= MAX_TOL and stats[4] <= FAR_SHARE, (name, (h, w), stats)
        assert np.abs(torch_px - onnx_px).max() < 1e-3  # the graph computes what training computed


def test_a_misaligned_crop_would_fail_the_tolerance(checkpoint):
    """The tolerance is tight enough to catch a geometry error: the crop one source pixel off."""
    info = base_info(str(checkpoint))
    frame = odd_frame(480, 854, 2)  # the smallest shift effect of the sizes above
    shifted = np.ascontiguousarray(np.roll(frame, 1, axis=1))
    diff = grey_levels(ours(info, torch.from_numpy(shifted)[None, None])[0, 0].numpy() - hf_pixels(checkpoint, frame), info)
    assert np.percentile(diff, 99) > P99_TOL
