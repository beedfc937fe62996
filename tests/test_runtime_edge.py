"""The runtime's edges: provider choice and reporting, manifest checks, input validation (a property test)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import TINY_K, copy_with_manifest
from export import providers as prov
from export.runtime import MANIFEST_FORMAT, VideoTextRuntime, check_frames, read_manifest
from toolchain.errors import VqtoolError

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def rt(tiny_export) -> VideoTextRuntime:
    return VideoTextRuntime(tiny_export, variant="fp32", threads=1)


def fake_available(monkeypatch, names: list[str]) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))


# --- providers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ([CPU, CUDA, TRT], [TRT, CUDA, CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        (["OpenVINOExecutionProvider", CPU], [CPU]),
        ([CPU], [CPU]),
        (["XnnpackExecutionProvider"], ["XnnpackExecutionProvider"]),
    ],
    ids=["trt-cuda-cpu", "cuda-cpu", "other-cpu", "cpu", "none-preferred"],
)
def test_auto_prefers_tensorrt_then_cuda_then_cpu(monkeypatch, available, expected):
    fake_available(monkeypatch, available)
    assert prov.choose_providers("auto") == expected


def test_explicit_names_and_aliases_keep_their_order(monkeypatch):
    fake_available(monkeypatch, [TRT, CUDA, CPU])
    assert prov.choose_providers("cuda,cpu") == [CUDA, CPU]
    assert prov.choose_providers(" TRT , Cuda ") == [TRT, CUDA]
    assert prov.choose_providers([CPU]) == [CPU]


def test_missing_explicit_provider_lists_the_available_ones(monkeypatch):
    fake_available(monkeypatch, [CPU, "XnnpackExecutionProvider"])
    with pytest.raises(VqtoolError) as exc:
        prov.choose_providers("cuda")
    msg = str(exc.value)
    assert CUDA in msg and f"available: {CPU}, XnnpackExecutionProvider" in msg and "onnxruntime-gpu" in msg


@pytest.mark.parametrize("bad", ["auto,cpu", "", " , "])
def test_auto_mixed_with_names_or_empty_is_an_error(bad):
    with pytest.raises(VqtoolError, match="--providers"):
        prov.choose_providers(bad)


def test_reported_providers_are_what_ort_started(monkeypatch, tiny_export, capsys):
    """ORT here is the CPU build: when CUDA/TensorRT are (falsely) listed, `auto` asks for them, ORT
    starts CPU only, and rt.providers says so instead of echoing the request."""
    fake_available(monkeypatch, [TRT, CUDA, CPU])
    preloads = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append(1) or print("preload noise"), raising=False)
    rt = VideoTextRuntime(tiny_export, providers="auto", threads=1)
    assert rt.providers == [CPU] and rt.text.get_providers() == [CPU]
    assert preloads == [1]  # GPU providers were on the list: the pip CUDA libraries get a chance to load
    out, err = capsys.readouterr()
    assert "preload noise" in err and out == ""  # stdout stays clean for `vqtool infer --json`
    assert f"{TRT}, {CUDA} did not start; running on {CPU}" in err


def test_explicit_provider_that_does_not_start_is_an_error(monkeypatch, tiny_export):
    fake_available(monkeypatch, [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda: None, raising=False)
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(tiny_export, providers="cuda", threads=1)
    msg = str(exc.value)
    assert f"{CUDA} is listed by ONNX Runtime but did not start" in msg and "ran on CPUExecutionProvider" in msg
    assert "nvidia-smi" in msg and "--providers auto" in msg


def test_auto_falls_back_when_a_provider_fails_to_start(monkeypatch, tiny_export, capsys):
    real = ort.InferenceSession

    def flaky(path, options, providers, **kwargs):
        if providers[0] == TRT:
            raise RuntimeError("libnvinfer.so.10: cannot open shared object file")
        return real(path, options, providers=[p for p in providers if p == CPU], **kwargs)

    fake_available(monkeypatch, [TRT, CPU])
    monkeypatch.setattr(ort, "InferenceSession", flaky)
    monkeypatch.setattr(ort, "preload_dlls", lambda: None, raising=False)
    rt = VideoTextRuntime(tiny_export, threads=1)
    assert rt.providers == [CPU]
    err = capsys.readouterr().err
    assert f"{TRT} did not start (libnvinfer.so.10" in err and f"trying {CPU}" in err
    with pytest.raises(VqtoolError, match="could not open it with TensorrtExecutionProvider"):
        VideoTextRuntime(tiny_export, providers="tensorrt", threads=1)


def test_infer_cli_reports_providers_and_rejects_missing_ones(run_cli, tiny_export, shapes_data):
    video = shapes_data / "videos" / "eval_0000.mp4"
    ok = run_cli("infer", tiny_export, "--providers", "cpu", "--video", video, "--text", "a red circle", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["providers"] == [CPU]
    bad = run_cli("infer", tiny_export, "--providers", "cuda", "--video", video, "--text", "a red circle")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "CUDAExecutionProvider not available" in bad.stderr and "available: " in bad.stderr


# --- manifest --------------------------------------------------------------------------------------------


def test_manifest_format_matches_the_exporter():
    from export.onnx_export import FORMAT_VERSION

    assert MANIFEST_FORMAT == FORMAT_VERSION


def test_newer_format_names_the_file_and_both_fixes(tiny_export, tmp_path):
    out = copy_with_manifest(tiny_export, tmp_path, lambda m: m.update(format=MANIFEST_FORMAT + 1))
    with pytest.raises(VqtoolError) as exc:
        read_manifest(out)
    msg = str(exc.value)
    assert str(out / "manifest.json") in msg and f"format {MANIFEST_FORMAT + 1}" in msg
    assert "pip install -U vqtool" in msg and "export again" in msg


@pytest.mark.parametrize("fmt", ["1", None, True, 0, 1.5], ids=["string", "null", "bool", "zero", "float"])
def test_bad_format_values(tiny_export, tmp_path, fmt):
    out = copy_with_manifest(tiny_export, tmp_path, lambda m: m.update(format=fmt))
    with pytest.raises(VqtoolError, match="'format' must be a positive integer"):
        read_manifest(out)


@pytest.mark.parametrize(
    ("edit", "key"),
    [(lambda m: m.pop("variants"), "'variants'"), (lambda m: m["text"].pop("tokenizer"), "'text.tokenizer'"),
     (lambda m: m["frames"].pop("decode_max_frames"), "'frames.decode_max_frames'")],
    ids=["variants", "tokenizer", "decode_max_frames"],
)
def test_missing_manifest_keys_are_named(tiny_export, tmp_path, edit, key):
    out = copy_with_manifest(tiny_export, tmp_path, edit)
    with pytest.raises(VqtoolError) as exc:
        read_manifest(out)
    assert key in str(exc.value) and "vqtool export RUN_DIR --force" in str(exc.value)


def test_missing_export_dir_and_graph_file(tiny_export, tmp_path):
    with pytest.raises(VqtoolError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    out = copy_with_manifest(tiny_export, tmp_path, lambda m: None)
    video_file = read_manifest(out)["variants"]["int8"]["video"]
    (out / video_file).unlink()
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(out, variant="int8")
    assert str(out / video_file) in str(exc.value) and "missing" in str(exc.value)


# --- inputs ----------------------------------------------------------------------------------------------


def test_bad_thread_count(tiny_export):
    with pytest.raises(VqtoolError, match="threads must be a whole number >= 1"):
        VideoTextRuntime(tiny_export, threads=-2)


def test_non_array_inputs_are_clear_errors(rt):
    with pytest.raises(VqtoolError, match="uint8 array"):
        check_frames([[1, 2], [3]])  # ragged
    with pytest.raises(VqtoolError, match="got dtype int64"):
        check_frames([[[[0, 0, 0]]]])  # Python ints become int64
    with pytest.raises(VqtoolError, match="item 1 is int"):
        rt.encode_text(["a red circle", 7])
    with pytest.raises(VqtoolError, match="non-empty list of videos"):
        rt.scores([], ["a red circle"])


DTYPES = [np.uint8, np.int8, np.uint16, np.int64, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def frame_arrays(draw):
    if draw(st.booleans()):  # half the draws are valid clips of any size, so the graph really runs
        shape = [draw(st.integers(1, 3))] * draw(st.integers(0, 1)) + [draw(st.integers(1, 9)) for _ in range(3)] + [3]
        dtype = np.uint8
    else:
        shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=6))
        if shape and draw(st.booleans()):
            shape[-1] = 3
        dtype = draw(st.sampled_from(DTYPES))
    arr = np.zeros(shape, dtype=dtype)
    if arr.size:
        arr[...] = draw(st.integers(0, 255)) % (2 if arr.dtype == np.bool_ else 128)
        arr.flat[-1] = 1  # not all equal: the selector and the normalisation see some contrast
    layout = draw(st.sampled_from(["c", "fortran", "reversed"]))
    if layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "reversed" and arr.ndim:
        arr = arr[::-1]
    return arr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_arrays())
def test_any_array_gives_a_valid_result_or_a_clean_error(rt, frames):
    """Random ranks, sizes, dtypes and memory layouts: a VqtoolError naming the problem, or embeddings and
    frame indices of the right shape, never an ONNX Runtime exception."""
    try:
        emb, idx = rt.encode_video(frames)
    except VqtoolError as exc:
        assert "frames" in str(exc)
        valid = frames.dtype == np.uint8 and frames.ndim in (4, 5) and frames.shape[-1] == 3 and frames.size > 0
        assert not valid, f"a valid clip {frames.shape} was rejected: {exc}"
        event("clean error")
        return
    event("ran the graph")
    batch = frames.shape[0] if frames.ndim == 5 else 1
    n = frames.shape[-4]
    assert emb.shape == (batch, rt.manifest["embedding_dim"]) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb)) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert idx.shape == (batch, TINY_K) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < n


def test_a_video_llm_export_is_named_not_misread(tiny_export, tmp_path):
    out = copy_with_manifest(tiny_export, tmp_path, lambda m: m.update(kind="video-llm"))
    with pytest.raises(VqtoolError) as exc:
        VideoTextRuntime(out)
    msg = str(exc.value)
    assert "video-llm export" in msg and "retrieval" in msg and "VideoLLMRuntime" in msg and "--prompt" in msg
