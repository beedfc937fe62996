"""vqtool export on a video-llm run (issue 17, part 2): vision.onnx vs PyTorch, parity gate, manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_vision_graph_matches_pytorch_on_odd_sizes(tiny_caption_run, tmp_path):
    import onnxruntime as ort

    from export.gen_export import export_vision
    from export.merge import merged_model

    _, merged, _, _ = merged_model(tiny_caption_run)
    export_vision(merged, tmp_path / "vision.onnx")
    frames = torch.randint(0, 256, (2, 17, 37, 53, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref, idx = merged.encode_frames(frames)
    feats, got_idx = ort.InferenceSession(str(tmp_path / "vision.onnx")).run(None, {"pixel_values": frames.numpy()})
    assert feats.shape == (ref.shape[0] * ref.shape[1], ref.shape[2])
    assert np.abs(feats - ref.flatten(0, 1).numpy()).max() < 1e-4
    assert np.array_equal(got_idx, idx.numpy())


@pytest.mark.slow
def test_export_of_a_caption_run_passes_parity(run_cli, tiny_caption_run, tmp_path):
    out = tmp_path / "exp"
    proc = run_cli("export", tiny_caption_run, "--output-dir", out, "--variants", "fp32,int4", timeout=600)
    assert proc.returncode == 0, proc.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["vision"]["frame_indices_identical"]
    fp32 = parity["variants"]["fp32"]
    assert fp32["identical_clips"] == fp32["clips"] == 48
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int4"} and (out / "tokenizer.json").is_file()
    again = run_cli("export", tiny_caption_run, "--output-dir", out)
    assert again.returncode != 0 and "--force" in again.stderr
