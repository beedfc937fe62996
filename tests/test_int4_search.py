"""int4 plan search: measured layer errors pick the MatMuls kept at 8 bits, plans go smallest file first,
every algorithm writes a graph that runs, and the search keeps the first passing plan (or the best one)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.int4_search import (
    Candidate, candidates, layer_errors, matmul_bytes, matmul_weights, predicted_bytes, run_search, search_space,
)
from export.quantize import INT4_ALGORITHMS, Int4Plan, quantize_int4_plan
from toolchain.recipe import validate_recipe


@pytest.fixture(scope="module")
def two_matmuls(tmp_path_factory):
    """x[?, 64] -> MatMul mm1 [64, 128] -> Relu -> MatMul mm2 [128, 64]; mm1 has one outlier input row."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) * 0.1
    w1[3, :] *= 30  # one huge row: every block that holds it rounds the others to zero
    w2 = rng.standard_normal((128, 64)).astype(np.float32) * 0.1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path_factory.mktemp("int4") / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    feeds = [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(3)]
    return path, feeds


def run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_layer_errors_rank_the_outlier_matmul_first(two_matmuls):
    path, feeds = two_matmuls
    errors = layer_errors(path, feeds)
    assert set(errors) == {"mm1", "mm2"} and errors["mm1"] > 1.1 * errors["mm2"] > 0


@pytest.mark.parametrize("algorithm", INT4_ALGORITHMS)
def test_every_algorithm_writes_a_graph_with_the_kept_matmul_at_8_bits(two_matmuls, tmp_path, algorithm):
    path, feeds = two_matmuls
    out = quantize_int4_plan(path, tmp_path / f"g.{algorithm}.onnx", Int4Plan(algorithm, 32, True, 4, ("mm1",)), feeds)
    bits = {n.name: {a.name: a.i for a in n.attribute}.get("bits") for n in onnx.load(str(out)).graph.node
            if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()) == [4, 8] and bits[next(k for k in bits if k.startswith("mm1"))] == 8
    ref, got = run(path, feeds[0]), run(out, feeds[0])
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.9, algorithm


def test_predicted_bytes_follow_the_written_files(two_matmuls, tmp_path):
    path, feeds = two_matmuls
    shapes = {"g": {n: w.shape for n, w in matmul_weights(onnx.load(str(path))).items()}}
    plans = [Int4Plan("rtn", 32), Int4Plan("rtn", 128), Int4Plan("rtn", 32, int8_nodes=("mm1",))]
    for i, plan in enumerate(plans):
        size = quantize_int4_plan(path, tmp_path / f"p{i}.onnx", plan, feeds).stat().st_size
        assert abs(size - predicted_bytes(shapes, {"g": plan})) < 2000, plan  # the rest: graph structure
    assert matmul_bytes((64, 128), 4, 32, False) == 64 * 128 // 2 + 2 * 128 * 4


def test_candidates_go_smallest_first_level_4_before_0(two_matmuls):
    path, feeds = two_matmuls
    shapes = {"g": {n: w.shape for n, w in matmul_weights(onnx.load(str(path))).items()}}
    space = search_space(validate_recipe({}).export.int4)
    cands = candidates(shapes, {"g": layer_errors(path, feeds)}, space)
    sizes = [c.predicted_bytes for c in cands]
    assert sizes == sorted(sizes) and len(cands) == 4 * 4 * 3 * 2  # algorithms x blocks x {0, 1, 2} kept x levels
    first = cands[0].plans["g"]
    # K = 64 pads a 128 block to twice its data, so block 64 is the smallest file here (the prediction knows)
    assert (first.block_size, first.int8_nodes, first.accuracy_level) == (64, (), 4)
    assert cands[1].plans["g"].accuracy_level == 0
    one_kept = next(c for c in cands if c.int8_count == 1)
    assert one_kept.plans["g"].int8_nodes == ("mm1",), "the measured worst layer is the one kept"
    fixed = validate_recipe({"export": {"int4": {"search": False, "accuracy_level": 1, "block_size": 64}}}).export.int4
    only = candidates(shapes, {"g": {}}, search_space(fixed))
    assert [(c.plans["g"].block_size, c.plans["g"].accuracy_level, c.int8_count) for c in only] == [(64, 1, 0)]


def test_search_keeps_the_first_pass_and_records_every_try():
    cands = [Candidate({"g": Int4Plan("rtn", b)}, b, 0) for b in (1, 2, 3, 4)]
    cos = {1: 0.95, 2: 0.97, 3: 0.99, 4: 0.999}

    def try_one(c):
        c4 = cos[c.predicted_bytes]
        return {"size_mb": c.predicted_bytes, "passed": c4 >= 0.98, "failures": [] if c4 >= 0.98 else ["low"],
                "video": {"min_cosine": c4}, "text": {"min_cosine": 1.0}}

    best, result, tried = run_search(cands, try_one, 10)
    assert best is cands[2] and result["passed"] and [t["passed"] for t in tried] == [False, False, True]
    best, result, tried = run_search(cands, try_one, 2)  # bounded: nothing passes in two tries
    assert best is cands[1] and not result["passed"] and len(tried) == 2 and tried[1]["min_cosine"] == 0.97
