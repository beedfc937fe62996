"""`vqtool bench latency --profile`: ONNX Runtime's profiler summed per op type, on a tiny graph."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.bench.profile import GEMM_OPS, int8_gemm_probe, markdown, profile_graph, top_ops


def tiny_graph(path, m=32, k=64, n=96):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, k])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return {"x": rng.standard_normal((m, k)).astype(np.float32)}


def test_profile_sums_op_types_to_the_node_time_and_counts_gemm_work(tmp_path):
    feed = tiny_graph(tmp_path / "g.onnx")
    prof = profile_graph(tmp_path / "g.onnx", feed, threads=1, runs=3)
    assert prof["runs"] == 3 and prof["node_ms"] > 0 and prof["model_run_ms"] > 0
    assert abs(sum(v["share"] for v in prof["ops"].values()) - 1.0) < 1e-6
    assert abs(sum(v["ms"] for v in prof["ops"].values()) - prof["node_ms"]) < 1e-6
    assert {"Relu", "Softmax"} <= set(prof["ops"]) and any(op in GEMM_OPS for op in prof["ops"])
    gemm = sum(v["share"] for op, v in prof["ops"].items() if op in GEMM_OPS)
    assert abs(prof["gemm_share"] - gemm) < 1e-6 and 0 < gemm < 1
    assert abs(prof["gemm_gop"] - 2 * 2 * 32 * 64 * 96 / 1e9) < 1e-9  # two MatMuls of 32x64x96
    assert prof["int8_gemm_gop"] == 0 == prof["int8_gemm_ms"] and prof["gemm_gops"] > 0
    assert list(prof["ops"])[0] in top_ops(prof)


def test_profile_of_the_int8_probe_finds_int8_gemms_and_the_table_shows_them(tmp_path):
    path, feed, ops = int8_gemm_probe(tmp_path, 16, 64, 128)
    prof = profile_graph(path, feed, threads=1, runs=2)
    assert any(op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger") for op in prof["ops"])
    assert abs(prof["int8_gemm_gop"] - ops / 1e9) < 1e-9 and 0 < prof["int8_gemm_ms"] <= prof["node_ms"]
    table = markdown({"variants": {"int8": {"profile": prof}, "torch eager fp32": {}}})
    assert "| int8 |" in table and "GEMM share" in table and "torch" not in table
