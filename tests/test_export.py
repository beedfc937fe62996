"""Tests for `export`: the export dir, parity.json, the ONNX graph contract and the parity gate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import TINY_K
from export.parity import ParityInputs, compare, gate_failures, onnx_outputs, torch_outputs
from export.pipeline import export_run
from export.tokenize import encode_texts, load_tokenizer
from toolchain.errors import VqtoolError
from toolchain.frames import select_frames
from toolchain.progress import Reporter
from toolchain.recipe import GateSection

EXPECTED_FILES = {
    "video_encoder.onnx", "text_encoder.onnx", "video_encoder.int8.onnx", "text_encoder.int8.onnx",
    "tokenizer.json", "manifest.json", "parity.json", "parity.md",
}
# (frames, height, width): odd sizes, portrait and landscape, N < K, N = K, N >> K, a 1-frame clip.
ODD_CLIPS = [(1, 31, 47), (2, 50, 90), (3, 4, 4), (TINY_K, 33, 33), (7, 90, 50), (100, 24, 40), (2, 3, 200)]


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_clip(n, h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def parity(tiny_export) -> dict:
    return json.loads((tiny_export / "parity.json").read_text())


@pytest.fixture(scope="module")
def manifest(tiny_export) -> dict:
    return json.loads((tiny_export / "manifest.json").read_text())


def test_export_dir_contents(tiny_export):
    names = {p.name for p in tiny_export.iterdir()}
    assert EXPECTED_FILES <= names
    assert not [n for n in names if n.startswith(".")], "temp files left in the export dir"
    for name in EXPECTED_FILES:
        assert (tiny_export / name).stat().st_size > 0
    leftovers = [p.name for p in tiny_export.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temp dirs left beside the export: {leftovers}"


def test_parity_json_schema(parity):
    assert parity["format"] == 1
    assert parity["passed"] is True
    assert set(parity["variants"]) >= {"fp32", "int8"}
    assert parity["eval_clips"] == 48
    for name, v in parity["variants"].items():
        assert v["file"] == ("video_encoder.onnx" if name == "fp32" else f"video_encoder.{name}.onnx")
        assert isinstance(v["size_mb"], float) and v["size_mb"] > 0
        assert v["passed"] is True and v["failures"] == []
        assert set(v["video"]) >= {"max_abs_diff", "min_cosine", "frame_index_agreement"}
        assert set(v["text"]) >= {"max_abs_diff", "min_cosine"}
        assert set(v["retrieval"]) >= {"t2v_r1_torch", "t2v_r1_onnx", "delta"}
        assert set(v["vs_merged"]) == {"video", "text", "retrieval"}, "parity against the merged model too"
        assert v["vs_merged"]["video"]["min_cosine"] >= 0.99
        assert v["retrieval"]["delta"] == pytest.approx(v["retrieval"]["t2v_r1_onnx"] - v["retrieval"]["t2v_r1_torch"])
        lat = v["latency_ms"]
        assert set(lat) >= {"torch_p50", "onnx_p50", "onnx_p95", "speedup"}
        assert all(lat[k] > 0 for k in ("torch_p50", "onnx_p50", "onnx_p95", "speedup"))
        assert lat["onnx_p95"] >= lat["onnx_p50"]
        assert lat["speedup"] == pytest.approx(lat["torch_p50"] / lat["onnx_p50"])
        assert lat["speedup_vs_trained"] == pytest.approx(lat["torch_trained_p50"] / lat["onnx_p50"])
        assert lat["runs"] == 3 and lat["onnx_mean"] > 0
    torch_lat = parity["torch_latency_ms"]
    assert torch_lat["merged_fp32"]["p50"] == parity["variants"]["fp32"]["latency_ms"]["torch_p50"]
    assert torch_lat["as_trained"]["p50"] == parity["variants"]["int8"]["latency_ms"]["torch_trained_p50"]
    assert parity["variants"]["int8"]["size_mb"] < parity["variants"]["fp32"]["size_mb"]


def test_parity_thresholds(parity):
    fp32, int8 = parity["variants"]["fp32"], parity["variants"]["int8"]
    for out in ("video", "text"):
        assert fp32[out]["min_cosine"] >= 0.9999
        assert fp32[out]["max_abs_diff"] < 1e-4
        assert int8[out]["min_cosine"] >= 0.99
    assert fp32["video"]["frame_index_agreement"] == 1.0
    assert int8["video"]["frame_index_agreement"] == 1.0
    # ±1 LSB noise agreement is measured with the motion selector (which reads pixels) in
    # test_cli_documented.py; this export's uniform selector ignores pixel values, so it is only a field here.
    assert 0.0 <= fp32["video"]["frame_index_agreement_lsb_noise"] <= 1.0
    assert fp32["retrieval"]["delta"] == 0.0


def test_parity_markdown(tiny_export, parity):
    text = (tiny_export / "parity.md").read_text()
    assert text.startswith("# Parity report: PASSED")
    for name in parity["variants"]:
        assert f"| {name} |" in text


def test_manifest(tiny_export, tiny_run, manifest):
    assert manifest["format"] == 1
    assert manifest["frames"]["k"] == TINY_K
    assert manifest["text"]["tokenizer"] == "tokenizer.json"
    assert manifest["embedding_dim"] > 0
    adapter = tiny_run / "adapter" / "adapter_model.safetensors"
    assert manifest["source"]["adapter_sha256"] == hashlib.sha256(adapter.read_bytes()).hexdigest()
    for files in manifest["variants"].values():
        for kind in ("video", "text"):
            path = tiny_export / files[kind]
            assert path.is_file()
            assert files["sha256"][kind] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_video_graph_contract(tiny_export):
    model = onnx.load(str(tiny_export / "video_encoder.onnx"))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == "frames"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert len(dims) == 5
    assert all(d.dim_param and not d.dim_value for d in dims[:4]), "batch, N, H, W must be dynamic"
    assert dims[4].dim_value == 3
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert set(outs) == {"video_embeds", "frame_indices"}
    assert outs["video_embeds"].elem_type == onnx.TensorProto.FLOAT
    assert outs["frame_indices"].elem_type == onnx.TensorProto.INT64
    assert outs["frame_indices"].shape.dim[1].dim_value == TINY_K
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vqtool.format"] == "1"
    assert meta["vqtool.frames.k"] == str(TINY_K)
    assert meta["vqtool.frames.selector"] == "uniform"
    assert "vqtool.image_size" in meta and "vqtool.mean" in meta and "vqtool.std" in meta
    # Standard ONNX ops only: every node is in the default domain (no custom-op library needed).
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


def test_text_graph_contract(tiny_export):
    model = onnx.load(str(tiny_export / "text_encoder.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(t.elem_type == onnx.TensorProto.INT64 for t in inputs.values())
    assert [o.name for o in model.graph.output] == ["text_embeds"]
    assert {p.key: p.value for p in model.metadata_props}["vqtool.frames.k"] == str(TINY_K)


@pytest.fixture(scope="module")
def video_sessions(tiny_export) -> dict:
    return {"fp32": session(tiny_export / "video_encoder.onnx"),
            "int8": session(tiny_export / "video_encoder.int8.onnx")}


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("shape", ODD_CLIPS, ids=lambda s: "x".join(map(str, s)))
def test_onnx_matches_torch_on_odd_clips(video_sessions, merged, variant, shape):
    _, merged_model, _, _ = merged
    clip = random_clip(*shape, seed=sum(shape))
    emb, idx = video_sessions[variant].run(None, {"frames": clip[None]})
    assert idx.dtype == np.int64 and idx.shape == (1, TINY_K)
    assert idx[0].tolist() == select_frames(torch.from_numpy(clip), TINY_K).tolist()
    with torch.no_grad():
        ref, ref_idx = merged_model.encode_frames(torch.from_numpy(clip)[None])
    assert np.array_equal(idx, ref_idx.numpy())
    assert emb.shape == tuple(ref.shape) and emb.dtype == np.float32
    # Measured on these clips (unit vectors): fp32 max abs <= 9e-8, cosine 1.0; int8 max abs 0.0011-0.0021,
    # min cosine 0.99998. The bounds leave ~5x (int8) and 1000x (fp32, exporter-dependent folding) room.
    tol, min_cos = (1e-4, 0.99999) if variant == "fp32" else (1e-2, 0.9995)
    assert np.abs(emb - ref.numpy()).max() < tol
    assert float((emb * ref.numpy()).sum()) >= min_cos
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_onnx_batch_of_clips(tiny_export, merged):
    _, merged_model, _, _ = merged
    batch = np.stack([random_clip(5, 40, 60, seed=s) for s in (1, 2)])
    emb, idx = session(tiny_export / "video_encoder.onnx").run(None, {"frames": batch})
    with torch.no_grad():
        ref, ref_idx = merged_model.encode_frames(torch.from_numpy(batch))
    assert idx.shape == (2, TINY_K) and np.array_equal(idx, ref_idx.numpy())
    assert np.abs(emb - ref.numpy()).max() < 1e-4 and (emb * ref.numpy()).sum(1).min() >= 0.99999
    assert np.abs(emb[0] - emb[1]).max() > 1e-3, "different clips should embed differently"


def test_text_graph_matches_torch(tiny_export, merged):
    _, merged_model, _, info = merged
    tok = load_tokenizer(tiny_export / "tokenizer.json", info.max_text_len)
    ids, mask = encode_texts(tok, ["a red circle moves left", "a green triangle moves up", "zebra"])
    (emb,) = session(tiny_export / "text_encoder.onnx").run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        ref = merged_model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert emb.shape == ref.shape == (3, emb.shape[1])
    assert np.abs(emb - ref).max() < 1e-4 and (emb * ref).sum(1).min() >= 0.99999


def perturbed_copy(src, dst) -> str:
    """The fp32 video graph with its largest float weight pushed far off."""
    model = onnx.load(str(src))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(target).copy()
    arr += np.random.default_rng(0).normal(0, 1.0, arr.shape).astype(np.float32)
    target.CopyFrom(numpy_helper.from_array(arr, target.name))
    onnx.save(model, str(dst))
    return target.name


def test_broken_graph_fails_the_gate_naming_output_and_diff(tiny_export, merged, tmp_path):
    _, merged_model, _, info = merged
    broken = tmp_path / "video_encoder.onnx"
    perturbed_copy(tiny_export / "video_encoder.onnx", broken)
    clips = [random_clip(n, h, w, seed=i) for i, (n, h, w) in enumerate(ODD_CLIPS[1:5])]
    ids, mask = encode_texts(load_tokenizer(tiny_export / "tokenizer.json", info.max_text_len),
                             ["a red circle moves left", "a blue square moves up", "a shape", "an object"])
    inputs = ParityInputs(clips, ids, mask)
    reference = torch_outputs(merged_model, inputs)
    text_sess = session(tiny_export / "text_encoder.onnx")
    gate = GateSection(min_cosine=0.9999, max_r1_drop=100.0)

    good = compare(reference, onnx_outputs(session(tiny_export / "video_encoder.onnx"), text_sess, inputs))
    assert gate_failures("fp32", {"vs_merged": good}, gate) == []

    bad = compare(reference, onnx_outputs(session(broken), text_sess, inputs))
    failures = gate_failures("fp32", {"vs_merged": bad}, gate)
    assert len(failures) == 1, failures
    assert failures[0].startswith("fp32 vs merged fp32: video_embeds min cosine")
    assert "max abs diff" in failures[0]
    assert f"{bad['video']['max_abs_diff']:.3g}" in failures[0]


def test_gate_lists_every_failure():
    result = {
        "video": {"max_abs_diff": 0.25, "min_cosine": 0.9, "frame_index_agreement": 0.5},
        "text": {"max_abs_diff": 0.125, "min_cosine": 0.95},
        "retrieval": {"t2v_r1_torch": 50.0, "t2v_r1_onnx": 40.0, "delta": -10.0},
    }
    failures = gate_failures("int8", {"vs_trained": result, "vs_merged": result},
                             GateSection(min_cosine=0.99, max_r1_drop=1.0))
    assert len(failures) == 8, "every check against both references"
    assert sum(f.startswith("int8 vs as-trained: ") for f in failures) == 4
    assert sum(f.startswith("int8 vs merged fp32: ") for f in failures) == 4
    joined = "\n".join(failures)
    assert "video_embeds min cosine 0.900000 < 0.99" in joined and "0.25" in joined
    assert "text_embeds min cosine 0.950000 < 0.99" in joined and "0.125" in joined
    assert "frame_indices" in joined and "50.0%" in joined
    assert "R@1 dropped 10.00" in joined


def test_gate_passes_at_threshold_and_fails_on_nan():
    ok = {
        "video": {"max_abs_diff": 0.0, "min_cosine": 0.99, "frame_index_agreement": 1.0},
        "text": {"max_abs_diff": 0.0, "min_cosine": 0.99},
        "retrieval": {"t2v_r1_torch": 50.0, "t2v_r1_onnx": 49.0, "delta": -1.0},
    }
    gate = GateSection(min_cosine=0.99, max_r1_drop=1.0)
    assert gate_failures("int8", {"vs_trained": ok}, gate) == []
    ok["text"]["min_cosine"] = float("nan")
    assert any("text_embeds" in f for f in gate_failures("int8", {"vs_trained": ok}, gate))


def test_export_into_existing_dir_without_force_is_refused(tiny_run, tmp_path):
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(VqtoolError) as exc:
        export_run(tiny_run, target, False, None, Reporter(quiet=True))
    assert str(target) in str(exc.value) and "--force" in str(exc.value)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"], "nothing else may be created"


def test_export_of_a_non_run_dir_is_refused(tmp_path):
    with pytest.raises(VqtoolError) as exc:
        export_run(tmp_path, tmp_path / "out", False, None, Reporter(quiet=True))
    assert "vqtool finetune" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_unsupported_variant_fails_and_leaves_nothing_behind(tiny_run, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(VqtoolError) as exc:
        export_run(tiny_run, target, False, ["int3"], Reporter(quiet=True))
    assert "int3" in str(exc.value) and "int8-static" in str(exc.value)
    assert not target.exists()
    assert not list(tmp_path.iterdir()), f"left behind: {[p.name for p in tmp_path.iterdir()]}"


def test_r1_gate_counts_decisive_flips_and_reports_near_ties():
    """A near-tied caption flipping is reported, not gated; a decided one is gated (export/parity.py)."""
    import numpy as np

    from export.parity import Outputs, compare, reference_failures
    from toolchain.recipe import GateSection

    videos, no_frames = np.eye(4, dtype=np.float32), np.zeros((4, 1))
    ref_text, got_text = np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)
    ref_text[1] = [0.0, 1.0, 0.9995, 0.0]  # the reference puts video 1 first for caption 1, by 5e-4
    got_text[1] = [0.0, 0.9990, 0.9995, 0.0]  # the variant puts video 2 first: one caption of 4 lost
    gate = GateSection(min_cosine=0.9, max_r1_drop=0.0)
    result = compare(Outputs(videos, no_frames, ref_text), Outputs(videos, no_frames, got_text))
    assert result["retrieval"]["delta"] == pytest.approx(-25.0)
    assert result["retrieval"]["delta_beyond_ties"] == 0.0 and result["retrieval"]["near_tie_flips"] == 1
    assert not [f for f in reference_failures("v", result, gate) if "R@1" in f]
    ref_text[1] = [0.0, 1.0, 0.5, 0.0]  # decided by 0.5: the same flip now fails the gate
    result = compare(Outputs(videos, no_frames, ref_text), Outputs(videos, no_frames, got_text))
    assert result["retrieval"]["delta_beyond_ties"] == pytest.approx(-25.0)
    assert result["retrieval"]["near_tie_flips"] == 0
    assert [f for f in reference_failures("v", result, gate) if "R@1 dropped 25.00" in f]
