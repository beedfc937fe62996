"""The cpu export target (export/targets.py, export/fusions.py) on the tiny video CLIP: what it fuses,
that the fused graph computes what the exported one does (fp32 and int8), that `portable` changes
nothing, that Softmax which is not attention is left alone, and `bench latency --target cpu`."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import fusions
from export.quantize import quantize_int8_dynamic
from export.targets import apply_target
from toolchain.errors import VqtoolError

K = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, fp32 video_encoder.onnx) of the tiny base, exported as `vqtool bench latency` does."""
    from toolchain.bench.latency import export_video
    from toolchain.models.archs import build_arch

    model = build_arch("tiny", K)
    return model, export_video(model, tmp_path_factory.mktemp("tiny"), "dynamo")


@pytest.fixture(scope="module")
def cpu_graph(tiny):
    """Every cpu rewrite, skip_layernorm (off by default, slower on ORT's CPU provider) included."""
    model, fp32 = tiny
    out = fp32.with_name("video_encoder.cpu.onnx")
    return out, apply_target(fp32, out, "cpu", model.image_size, ("attention", "skip_layernorm", "patch_matmul"))


def op_counts(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def run(path, frames: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})


def frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, K, 48, 40, 3), dtype=np.uint8)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def test_cpu_target_fuses_every_layer_s_attention_and_the_patch_conv(tiny, cpu_graph):
    model, fp32 = tiny
    path, counts = cpu_graph
    layers = model.clip.config.vision_config.num_hidden_layers
    assert counts == {"attention": layers, "skip_layernorm": 2 * layers - 1, "patch_matmul": 1}
    before, after = op_counts(fp32), op_counts(path)
    assert after["MultiHeadAttention"] == layers and after["Softmax"] == 0 < before["Softmax"]
    assert after["SkipLayerNormalization"] == 2 * layers - 1 and after["Conv"] == 0
    assert after["MatMul"] == before["MatMul"] - 2 * layers + 1  # Q·Kᵀ and P·V gone, the patch MatMul added
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["vqtool.target"] == "cpu" and meta["vqtool.format"] == "1"


def test_fused_graph_computes_what_the_exported_one_does(tiny, cpu_graph):
    _, fp32 = tiny
    clip = frames()
    want, got = run(fp32, clip), run(cpu_graph[0], clip)
    assert np.abs(want[0] - got[0]).max() < 1e-4 and min_cosine(want[0], got[0]) >= 0.99999
    assert np.array_equal(want[1], got[1])  # frame indices


def test_fused_graph_quantizes_to_int8_within_the_gate(tiny, cpu_graph):
    _, fp32 = tiny
    int8 = quantize_int8_dynamic(cpu_graph[0], cpu_graph[0].with_name("video_encoder.cpu.int8.onnx"))
    ops = op_counts(int8)
    assert ops["MatMulInteger"] > 0 and ops["MultiHeadAttention"] > 0 and ops["SkipLayerNormalization"] > 0
    clip = frames(1)
    assert min_cosine(run(fp32, clip)[0], run(int8, clip)[0]) >= 0.99


def test_portable_target_leaves_the_graph_byte_identical(tiny, tmp_path):
    _, fp32 = tiny
    out = tmp_path / "video_encoder.onnx"
    assert apply_target(fp32, out, "portable", 32) == {}
    assert out.read_bytes() == fp32.read_bytes()


def test_an_unknown_target_names_the_choices(tiny, tmp_path):
    with pytest.raises(VqtoolError, match="portable, cpu"):
        apply_target(tiny[1], tmp_path / "x.onnx", "gpu", 32)


def test_a_wrong_image_size_leaves_the_patch_conv_alone(tiny, tmp_path):
    """With the wrong size the im2col Reshape's -1 batch would silently absorb the difference."""
    model, fp32 = tiny
    counts = apply_target(fp32, tmp_path / "x.onnx", "cpu", 2 * model.image_size, ("patch_matmul",))
    assert counts == {"attention": 0, "skip_layernorm": 0, "patch_matmul": 0}


def test_the_cpu_target_leaves_skip_layernorm_off_unless_asked(tiny, tmp_path):
    model, fp32 = tiny
    counts = apply_target(fp32, tmp_path / "x.onnx", "cpu", model.image_size)
    assert counts["skip_layernorm"] == 0 < counts["attention"] and counts["patch_matmul"] == 1
    assert op_counts(tmp_path / "x.onnx")["SkipLayerNormalization"] == 0


def test_fusions_can_be_applied_one_at_a_time(tiny, tmp_path, monkeypatch):
    model, fp32 = tiny
    monkeypatch.setenv("VQTOOL_CPU_FUSIONS", "skip_layernorm")
    counts = apply_target(fp32, tmp_path / "x.onnx", "cpu", model.image_size)
    assert counts["attention"] == counts["patch_matmul"] == 0 < counts["skip_layernorm"]
    assert op_counts(tmp_path / "x.onnx")["Softmax"] > 0
    monkeypatch.setenv("VQTOOL_CPU_FUSIONS", "attention,flash")
    with pytest.raises(VqtoolError, match="flash.*VQTOOL_CPU_FUSIONS"):
        apply_target(fp32, tmp_path / "x.onnx", "cpu", model.image_size)


# --- Softmax that is not multi-head attention -------------------------------------------------

SEQ, HEADS, HEAD_DIM = 5, 2, 4
DIM = HEADS * HEAD_DIM


def init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def attention_model(key_split: list[int], key_perm: list[int]) -> onnx.ModelProto:
    """q, k, v [b, SEQ, DIM] -> softmax(Q·Kᵀ · scale)·V with heads split by Reshape / Transpose.

    The right key layout is split [0, SEQ, HEADS, HEAD_DIM] with perm [0, 2, 3, 1]; another split
    and perm can give the same shapes while mixing values across heads: attention by structure only."""
    scale = 1 / np.sqrt(HEAD_DIM)
    nodes = [
        helper.make_node("Reshape", ["q", "split"], ["q4"]),
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["k", "key_split"], ["k4"]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=key_perm),
        helper.make_node("Reshape", ["v", "split"], ["v4"]),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vh"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge"], ["out"]),
    ]
    inits = [init("split", np.array([0, SEQ, HEADS, HEAD_DIM], np.int64)),
             init("key_split", np.array(key_split, np.int64)),
             init("merge", np.array([0, SEQ, DIM], np.int64)), init("scale", np.float32(scale))]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", SEQ, DIM])  # noqa: E731
    graph = helper.make_graph(nodes, "attention", [io("q"), io("k"), io("v")], [io("out")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def fused_or_not(model: onnx.ModelProto) -> tuple[int, np.ndarray, np.ndarray]:
    """(attentions fused, output before, output after) on random q, k, v."""
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((3, SEQ, DIM)).astype(np.float32) for n in "qkv"}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    fused = fusions.fuse_attention(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return fused, before, after


def test_real_multi_head_attention_is_fused_and_proven():
    fused, before, after = fused_or_not(attention_model([0, SEQ, HEADS, HEAD_DIM], [0, 2, 3, 1]))
    assert fused == 1 and np.abs(before - after).max() < 1e-5


def test_attention_by_structure_only_is_not_proven_and_left_unfused():
    """Keys split [b, SEQ, HEAD_DIM, HEADS]: same shapes, the walker matches it, execution disproves it."""
    model = attention_model([0, SEQ, HEAD_DIM, HEADS], [0, 3, 2, 1])
    ix = fusions.index(model.graph)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    att = fusions.find_attention(ix, softmax)
    assert att is not None and att.heads == HEADS  # the structure alone looks right
    assert not fusions.proves_attention(model.graph, ix, att, list(model.opset_import))
    fused, before, after = fused_or_not(model)
    assert fused == 0 and np.array_equal(before, after)
    assert [n.op_type for n in model.graph.node].count("Softmax") == 1


def test_a_softmax_classifier_head_is_left_unfused():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "classes"], ["out"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3])],
                              [init("w", np.ones((8, 4), np.float32)), init("classes", np.ones((4, 3), np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fusions.fuse_attention(model) == 0 and len(model.graph.node) == 3


# --- bench latency --target cpu ----------------------------------------------------------------

def test_cli_bench_latency_times_portable_and_cpu_target_side_by_side(run_cli, tmp_path):
    bad = run_cli("bench", "latency", "--arch", "tiny", "--target", "gpu")
    assert bad.returncode == 2 and "--target 'gpu' not known; choose portable or cpu" in bad.stderr
    assert "Traceback" not in bad.stderr
    proc = run_cli("bench", "latency", "--arch", "tiny", "--frames", K, "--size", 32, "--threads", 1, "--runs", 2,
                   "--variants", "int8", "--target", "cpu", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "latency.json").read_text())
    rows = result["variants"]
    assert list(rows) == ["torch eager fp32", "fp32", "int8", "fp32 (cpu target)", "int8 (cpu target)"]
    assert result["target"] == "cpu" and result["fusions"]["cpu target"]["attention"] > 0
    for name in ("fp32 (cpu target)", "int8 (cpu target)"):
        assert rows[name]["p50_ms"] > 0 and rows[name]["speedup_vs_torch"] > 0
    assert rows["fp32 (cpu target)"]["min_cosine_vs_torch"] > 0.9999
    assert rows["int8 (cpu target)"]["min_cosine_vs_torch"] > 0.99
    table = (tmp_path / "latency.md").read_text()
    assert "| int8 (cpu target) |" in table and "cpu target: the fp32 graph rewritten" in table


@pytest.mark.slow
def test_export_with_the_cpu_target_passes_parity_and_loads_in_the_runtime(tiny_run, tiny_export, tmp_path):
    """`vqtool export --target cpu`: the video encoder fused, every variant gated, the graph check
    accepting the target's ops (and only for a graph that says it is a cpu-target one)."""
    from export.pipeline import export_run
    from export.runtime import VideoTextRuntime
    from export.validate import check_graph
    from toolchain.progress import Reporter

    out = tmp_path / "cpu"
    parity = export_run(tiny_run, out, False, ["fp32", "fp16", "int8", "int4"], Reporter(quiet=True), graph_target="cpu")
    assert parity["passed"], parity.get("failures")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["target"] == "cpu"
    portable = Counter(n.op_type for n in onnx.load(str(tiny_export / "video_encoder.onnx")).graph.node)
    assert portable["Softmax"] >= 1 and portable["MultiHeadAttention"] == 0
    for name in ("video_encoder.onnx", "video_encoder.int8.onnx", "video_encoder.int4.onnx", "video_encoder.fp16.onnx"):
        ops = Counter(n.op_type for n in onnx.load(str(out / name)).graph.node)
        assert ops["MultiHeadAttention"] == portable["Softmax"] and ops["Softmax"] == 0, name  # every layer's
        assert ops["Conv"] < portable["Conv"], f"{name}: the patch Conv is an im2col MatMul"
    assert "MultiHeadAttention" not in {n.op_type for n in onnx.load(str(out / "text_encoder.onnx")).graph.node}
    assert all(not v["graphs"][k]["problems"] for v in parity["variants"].values() for k in v["graphs"])
    stripped = onnx.load(str(out / "video_encoder.int8.onnx"))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "unmarked.onnx"))
    assert any("MultiHeadAttention" in p for p in check_graph(tmp_path / "unmarked.onnx", "int8"))
    clip = np.random.default_rng(1).integers(0, 256, (7, 36, 44, 3), dtype=np.uint8)
    ref, _ = VideoTextRuntime(out, "fp32", threads=1).encode_video(clip)
    emb, _ = VideoTextRuntime(out, "int8", threads=1).encode_video(clip)
    assert float((emb * ref).sum()) > 0.99
