"""Decoder variants: int4 keeps an 8-bit lm_head; GGUF Q4_1 / Q8_0 blocks go into MatMulNBits exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.gen_spec import decoder_shape_of, graphs_manifest, read_graphs_manifest
from export.gguf_int4 import q4_1_blocks, q8_0_blocks, weight_key, write_gguf_matmuls

gguf = pytest.importorskip("gguf")  # the train extra installs it (transformers reads GGUF with it)


def random_q4_1(rows: int, blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.001, 0.05, (rows, blocks, 1)).astype(np.float16).view(np.uint8)
    m = rng.uniform(-0.4, 0.0, (rows, blocks, 1)).astype(np.float16).view(np.uint8)
    qs = rng.integers(0, 256, (rows, blocks, 16), dtype=np.uint8)
    return np.concatenate([d, m, qs], axis=-1).reshape(rows, -1)


def random_q8_0(rows: int, blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.001, 0.01, (rows, blocks, 1)).astype(np.float16).view(np.uint8)
    qs = rng.integers(-128, 128, (rows, blocks, 32), dtype=np.int8).view(np.uint8)
    return np.concatenate([d, qs], axis=-1).reshape(rows, -1)


@pytest.mark.parametrize("kind,make", [("Q4_1", random_q4_1), ("Q8_0", random_q8_0)])
def test_block_reading_matches_the_gguf_package(kind, make):
    raw = make(6, 4)
    ref = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, kind))
    reader = q4_1_blocks if kind == "Q4_1" else q8_0_blocks
    assert np.array_equal(reader(raw).dequantize(), ref)


def matmul_graph(weight_t: np.ndarray) -> onnx.ModelProto:
    k, n = weight_t.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])],
                              [numpy_helper.from_array(weight_t, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("kind,level,tol", [("Q4_1", 1, 2e-5), ("Q4_1", 4, 5e-2), ("Q8_0", 1, 2e-5), ("Q8_0", 4, 5e-2)])
def test_gguf_blocks_become_matmulnbits_without_requantizing(tmp_path, kind, level, tol):
    raw = (random_q4_1 if kind == "Q4_1" else random_q8_0)(48, 4, seed=3)  # N = 48 rows, K = 128
    blocks = (q4_1_blocks if kind == "Q4_1" else q8_0_blocks)(raw)
    weight = blocks.dequantize()  # [N, K], what PyTorch holds after transformers' GGUF loading
    onnx.save(matmul_graph(np.ascontiguousarray(weight.T)), str(tmp_path / "fp32.onnx"))
    replaced = write_gguf_matmuls(tmp_path / "fp32.onnx", tmp_path / "q.onnx", {"proj.weight": blocks},
                                  {weight_key(weight.T): "proj.weight"}, accuracy_level=level)
    assert replaced == ["proj.weight"]
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in proto.graph.node if n.op_type == "MatMulNBits"] == ["MatMulNBits"]
    assert not any(i.name == "w" for i in proto.graph.initializer)  # the float weight is gone
    x = np.random.default_rng(1).standard_normal((2, 3, 128)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ weight.T
    # The weights are exact at every level; level 1 computes in float32 (the reference up to summation
    # order), level 4 quantizes the activations to int8 per block, which is where its error comes from.
    assert np.abs(got - ref).max() / np.abs(ref).max() < tol


def test_int4_decoder_keeps_lm_head_at_8_bits(tmp_path):
    import shutil

    from gen_models import exported

    from export.gen_variants import DecoderQuant, make_decoder_variant

    shutil.copy(exported("llama")[1] / "decoder.onnx", tmp_path / "decoder.onnx")
    make_decoder_variant(tmp_path / "decoder.onnx", "fp32")
    int4 = make_decoder_variant(tmp_path / "decoder.onnx", "int4", DecoderQuant())
    bits = {}
    for node in onnx.load(str(int4)).graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            bits[attrs["N"]] = bits.get(attrs["N"], set()) | {attrs["bits"]}
    assert bits.pop(96) == {8}  # vocab 96: the lm_head
    assert bits and all(b == {4} for b in bits.values())
    assert not any(n.op_type == "MatMul" and "linear" in n.name for n in onnx.load(str(int4)).graph.node)


def test_graphs_manifest_round_trips(tmp_path):
    from export.gen_spec import DecoderShape, decoder_spec, embedding_spec

    shape = DecoderShape(num_layers=3, num_kv_heads=2, head_dim=16, hidden=64, vocab=96)
    manifest = graphs_manifest({"decoder": decoder_spec(shape), "embedding": embedding_spec(64)},
                               {"fp32": {"decoder": "decoder.onnx", "embedding": "embedding.onnx"},
                                "int4": {"decoder": "decoder.int4.onnx", "embedding": "embedding.onnx"}})
    specs, variants = read_graphs_manifest(manifest)
    assert decoder_shape_of(specs["decoder"]) == shape
    assert variants["int4"]["decoder"] == "decoder.int4.onnx"
    assert specs["decoder"].inputs[3].name == "past_key_values.0.key"
