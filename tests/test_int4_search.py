"""int4 plan search: measured layer errors pick the MatMuls kept at 8 bits, plans go smallest file first,
every algorithm writes a graph that runs, and the search keeps the first passing plan (or the best one)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.int4_search import grid, matmul_bytes, matmul_weights, plan, predicted_bytes, search, search_space
from export.sensitivity import layer_errors
from export.quantize import INT4_ALGORITHMS, Int4Plan, quantize_int4_plan
from toolchain.errors import VqtoolError
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


def test_grid_goes_smallest_first_and_the_measured_worst_layer_is_kept_first(two_matmuls):
    path, feeds = two_matmuls
    shapes = {"g": {n: w.shape for n, w in matmul_weights(onnx.load(str(path))).items()}}
    errors = {"g": layer_errors(path, feeds)}
    space = search_space(validate_recipe({}).export.int4)
    cands = grid(shapes, errors, space)
    sizes = [c.predicted_bytes for c in cands]
    assert sizes == sorted(sizes) and len(cands) == 4 * 4  # algorithms x blocks, all at 4 bits, level 4
    first = cands[0].plans["g"]
    # K = 64 pads a 128 block to twice its data, so block 64 is the smallest file here (the prediction knows)
    assert (first.block_size, first.int8_nodes, first.accuracy_level) == (64, (), 4)
    one_kept = plan(shapes, errors, "rtn", 32, 4, 1)
    assert one_kept.plans["g"].int8_nodes == ("mm1",), "the measured worst layer is the one kept"
    assert one_kept.predicted_bytes > plan(shapes, errors, "rtn", 32, 4, 0).predicted_bytes
    fixed = validate_recipe({"export": {"int4": {"search": False, "accuracy_level": 1, "block_size": 64}}}).export.int4
    only = grid(shapes, {"g": {}}, search_space(fixed))
    assert [(c.plans["g"].block_size, c.plans["g"].accuracy_level, c.int8_count) for c in only] == [(64, 1, 0)]


def fake_tries(threshold: float = 0.98, fails: tuple = ()):
    """A model of int4 error: rtn at block 32 is the best plan, level 0 adds 0.001, each 8-bit MatMul 0.002."""
    shapes = {"video": {f"v{i}": (64, 64) for i in range(40)}, "text": {f"t{i}": (64, 64) for i in range(8)}}
    errors = {kind: {n: 1.0 / (1 + int(n[1:]) + 10 * (kind == "text")) for n in names} for kind, names in shapes.items()}

    def try_one(c):
        p = c.first()
        if p.algorithm in fails:
            raise ValueError("cannot reshape array of size 32 into shape (64,newaxis)")
        cos = (0.97 if (p.algorithm, p.block_size) == ("rtn", 32) else 0.96) + 0.001 * (p.accuracy_level == 0)
        cos += 0.002 * c.int8_count
        return {"size_mb": c.predicted_bytes / 1e6, "passed": cos >= threshold, "failures": [] if cos >= threshold else ["low"],
                "video": {"min_cosine": cos}, "text": {"min_cosine": 1.0}}

    return shapes, errors, try_one


def test_search_finds_the_fewest_8_bit_matmuls_that_pass_on_the_best_plan():
    shapes, errors, try_one = fake_tries()
    space = search_space(validate_recipe({}).export.int4)
    best, result, tried = search(shapes, errors, space, try_one, 40)
    stages = [t["stage"] for t in tried]
    assert stages == ["grid"] * 16 + ["level"] + ["keep8"] * (len(stages) - 17)
    p = best.first()
    assert result["passed"] and (p.algorithm, p.block_size, p.accuracy_level, best.int8_count) == ("rtn", 32, 0, 5)
    counts = [sum(len(v) for v in t["int8_matmuls"].values()) for t in tried if t["stage"] == "keep8"]
    assert counts == [1, 2, 4, 8, 6, 5], "doubling to the first pass, then bisection down"
    assert set(best.plans["video"].int8_nodes) == {"v0", "v1", "v2", "v3", "v4"}, "the largest measured errors"
    assert {k: tried[-1][k] for k in best.describe()} == best.describe() and tried[-1]["passed"]


def test_search_after_an_all_4_bit_pass_tries_only_smaller_plans_and_keeps_the_smallest_pass():
    shapes, errors, try_one = fake_tries(threshold=0.965)
    space = search_space(validate_recipe({}).export.int4)
    best, result, tried = search(shapes, errors, space, try_one, 40)
    first_pass = next(t for t in tried if t["passed"])
    assert (first_pass["stage"], first_pass["algorithm"], first_pass["block_size"]) == ("grid", "rtn", 32)
    later = tried[tried.index(first_pass) + 1:]
    assert later and all(t["stage"] == "keep8" and t["predicted_mb"] < first_pass["predicted_mb"] for t in later)
    passed = [t for t in tried if t["passed"]]
    assert result["passed"] and result["size_mb"] == min(t["size_mb"] for t in passed), "the smallest pass is kept"
    assert best.int8_count > 0 and best.predicted_bytes < first_pass["predicted_mb"] * 1e6


def test_a_bounded_search_with_no_pass_keeps_the_closest_failure():
    shapes, errors, try_one = fake_tries(threshold=0.999)
    space = search_space(validate_recipe({}).export.int4)
    best, result, tried = search(shapes, errors, space, try_one, 20)
    assert len(tried) == 20 and not result["passed"]
    assert result["video"]["min_cosine"] == max(t["min_cosine"] for t in tried), "the closest failure is kept"


def test_a_plan_the_quantizer_cannot_build_is_a_failed_try_and_the_search_goes_on():
    """ORT's k_quant path raises on an odd number of blocks along K; that plan is recorded, not fatal."""
    shapes, errors, try_one = fake_tries(fails=("k_quant",))
    space = search_space(validate_recipe({}).export.int4)
    best, result, tried = search(shapes, errors, space, try_one, 40)
    broken = [t for t in tried if t["algorithm"] == "k_quant"]
    assert len(broken) == 4 and all(not t["passed"] and "cannot reshape" in t["error"] for t in broken)
    assert result["passed"] and best.first().algorithm == "rtn"
    only_kquant = (("k_quant",), *space[1:])
    with pytest.raises(VqtoolError, match="no plan could be built.*export.int4.algorithms"):
        search(shapes, errors, only_kquant, try_one, 40)
