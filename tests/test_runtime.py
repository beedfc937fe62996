"""Tests for the torch-free runtime: sessions on an export dir, raw frames or files in, clear input errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import BLOCK_TORCH, TINY_K, cli_env, copy_with_manifest
from export.runtime import VideoTextRuntime, check_frames, choose_providers, read_manifest
from toolchain.data.video import decode_video
from toolchain.errors import VqtoolError

CAPTIONS = ["a red circle moves left", "a blue square moves up", "a green triangle moves down"]



@pytest.fixture(scope="module")
def rt(tiny_export) -> VideoTextRuntime:
    return VideoTextRuntime(tiny_export, variant="fp32", threads=1)


@pytest.fixture(scope="module")
def eval_video(shapes_data):
    return shapes_data / "videos" / "eval_0000.mp4"


def test_providers_and_variant(rt):
    assert rt.variant == "fp32"
    assert "CPUExecutionProvider" in rt.providers
    assert choose_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_encode_video_from_path_equals_from_array(rt, eval_video):
    emb_path, idx_path = rt.encode_video(eval_video)
    emb_str, _ = rt.encode_video(str(eval_video))
    frames = decode_video(eval_video, rt.manifest["frames"]["decode_max_frames"])
    emb_arr, idx_arr = rt.encode_video(frames)
    assert emb_path.shape == (1, rt.manifest["embedding_dim"]) and emb_path.dtype == np.float32
    assert idx_path.shape == (1, TINY_K) and idx_path.dtype == np.int64
    assert np.array_equal(emb_path, emb_arr) and np.array_equal(emb_path, emb_str)
    assert np.array_equal(idx_path, idx_arr)
    assert np.allclose(np.linalg.norm(emb_path, axis=1), 1.0, atol=1e-5)


def test_encode_video_batch(rt):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 6, 20, 30, 3), dtype=np.uint8)
    emb, idx = rt.encode_video(batch)
    assert emb.shape[0] == 3 and idx.shape == (3, TINY_K)
    single, _ = rt.encode_video(batch[1])
    assert np.abs(single[0] - emb[1]).max() < 1e-5


def test_encode_text(rt):
    emb = rt.encode_text(CAPTIONS)
    assert emb.shape == (3, rt.manifest["embedding_dim"]) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_scores_shape_is_videos_by_texts(rt, eval_video):
    rng = np.random.default_rng(1)
    videos = [eval_video, rng.integers(0, 256, (9, 30, 50, 3), dtype=np.uint8)]
    scores = rt.scores(videos, CAPTIONS)
    assert scores.shape == (2, 3)
    manual = rt.encode_video(eval_video)[0] @ rt.encode_text(CAPTIONS).T
    assert np.allclose(scores[0], manual[0], atol=1e-6)
    assert np.all(np.abs(scores) <= 1 + 1e-5)


def test_int8_variant_is_close_to_fp32(tiny_export, rt, eval_video):
    q = VideoTextRuntime(tiny_export, variant="int8", threads=1)
    e32, i32 = rt.encode_video(eval_video)
    e8, i8 = q.encode_video(eval_video)
    assert np.array_equal(i32, i8)
    assert float((e32 * e8).sum()) > 0.99


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (np.zeros((4, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((4, 8, 8, 3), dtype=np.int64), "uint8"),
        (np.zeros((4, 8, 8, 4), dtype=np.uint8), "[N,H,W,3]"),
        (np.zeros((4, 8, 8), dtype=np.uint8), "[N,H,W,3]"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "at least one frame"),
        (np.zeros((1, 4, 0, 8, 3), dtype=np.uint8), "empty axis"),
    ],
    ids=["float32", "int64", "four-channels", "no-channel-axis", "empty-clip", "zero-height"],
)
def test_bad_frames_are_clear_errors(rt, frames, needle):
    with pytest.raises(VqtoolError) as exc:
        rt.encode_video(frames)
    assert needle in str(exc.value)
    msg = str(exc.value)
    # The message shows what was passed: its dtype, or its shape (with the batch axis added or not).
    assert str(frames.dtype) in msg or str(list(frames.shape)) in msg or str([1, *frames.shape]) in msg


def test_check_frames_adds_batch_axis():
    out = check_frames(np.zeros((2, 3, 4, 3), dtype=np.uint8))
    assert out.shape == (1, 2, 3, 4, 3) and out.flags["C_CONTIGUOUS"]


def test_encode_text_needs_a_list(rt):
    for bad in ("a red circle", []):
        with pytest.raises(VqtoolError, match="non-empty list"):
            rt.encode_text(bad)


def test_missing_video_file_is_a_clear_error(rt, tmp_path):
    with pytest.raises(VqtoolError) as exc:
        rt.encode_video(tmp_path / "nope.mp4")
    assert "nope.mp4" in str(exc.value) and "not found" in str(exc.value)


def test_missing_variant(tiny_export):
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(tiny_export, variant="int4")
    msg = str(exc.value)
    assert "'int4'" in msg and "fp32" in msg and "int8" in msg


def test_missing_provider(tiny_export):
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(tiny_export, providers="NoSuchExecutionProvider")
    assert "NoSuchExecutionProvider" in str(exc.value) and "CPUExecutionProvider" in str(exc.value)


def test_manifest_missing(tmp_path):
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(tmp_path)
    assert "manifest.json" in str(exc.value) and "vqtool export" in str(exc.value)


def test_manifest_format_newer(tiny_export, tmp_path):
    out = copy_with_manifest(tiny_export, tmp_path, lambda m: m.update(format=99))
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(out)
    assert "99" in str(exc.value) and "upgrade" in str(exc.value)


def test_manifest_current_format_reads(tiny_export):
    assert read_manifest(tiny_export)["format"] == 1


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": 1, "variants": ')
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(tmp_path)
    assert "manifest.json" in str(exc.value)


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)


def test_blocker_really_blocks_torch():
    proc = run_python("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_runtime_never_imports_torch(tiny_export, eval_video):
    code = """
        import json, sys
        import numpy as np
        from export.runtime import VideoTextRuntime
        rt = VideoTextRuntime(sys.argv[1], variant="int8")
        emb, idx = rt.encode_video(sys.argv[2])
        raw, _ = rt.encode_video(np.zeros((3, 20, 30, 3), dtype=np.uint8))
        scores = rt.scores([sys.argv[2]], ["a red circle moves left", "a blue square moves up"])
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print(json.dumps({"shape": list(scores.shape), "k": idx.shape[1]}))
    """
    proc = run_python(code, tiny_export, eval_video)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"shape": [1, 2], "k": TINY_K}


def test_infer_command_never_imports_torch(tiny_export, eval_video):
    code = """
        import sys
        from toolchain.cli import main
        sys.argv = ["vqtool", "infer", sys.argv[1], "--video", sys.argv[2], "--text", "a red circle", "--json"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"exit {exc.code}"
        assert "torch" not in sys.modules, "torch was imported"
    """
    proc = run_python(code, tiny_export, eval_video)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["scores"]) == 1 and len(out["scores"][0]) == 1
