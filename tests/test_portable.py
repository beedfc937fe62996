"""Portable graphs: every variant of both exporters passes onnx.checker (full_check) and imports only the
opset domains its nodes use (ai.onnx; int4 adds com.microsoft for MatMulNBits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.onnx_export import export_text_encoder, export_video_encoder
from export.quantize import VariantOptions, make_variant, optimize_fp32

ALL = ["fp32", "fp16", "int8", "int8-static", "int4"]
EXPECTED_DOMAINS = {v: {""} for v in ALL} | {"int4": {"", "com.microsoft"}}


def node_domains(graph: onnx.GraphProto) -> set[str]:
    """Domains of every node, subgraphs (If/Loop/Scan bodies) included; "ai.onnx" is the default ""."""
    found = set()
    for node in graph.node:
        found.add("" if node.domain == "ai.onnx" else node.domain)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= node_domains(sub)
    return found


def assert_portable(path: Path, variant: str) -> None:
    onnx.checker.check_model(str(path), full_check=True)  # raises with the checker's own message
    model = onnx.load(str(path))
    used = node_domains(model.graph).union(*(node_domains(f) for f in model.functions)) | {""}
    declared = {"" if o.domain == "ai.onnx" else o.domain for o in model.opset_import}
    assert declared == used, f"{path.name}: imports {sorted(declared - used)} that no node uses"
    assert used == EXPECTED_DOMAINS[variant], f"{path.name}: uses domains {sorted(used)}"


def graphs_listed(manifest: dict) -> list[tuple[str, str]]:
    """(variant, file) for every .onnx file a manifest lists, whatever the graph kinds are called."""
    out = []
    for variant, files in manifest["variants"].items():
        out += [(variant, f) for f in files.values() if isinstance(f, str) and f.endswith(".onnx")]
    return out


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exporter_variants(request, merged, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Both encoders from one exporter, optimised, then every variant through export/quantize.py."""
    _, model, _, info = merged
    tmp = tmp_path_factory.mktemp(f"portable-{request.param}")
    raw = {"video": export_video_encoder(model, tmp / "raw-video.onnx", 18, {}, request.param),
           "text": export_text_encoder(model, tmp / "raw-text.onnx", 18, info.max_text_len, {}, request.param)}
    fp32 = {k: optimize_fp32(p, tmp / f"{k}_encoder.onnx") for k, p in raw.items()}
    rng = np.random.default_rng(0)
    feeds = {"video": [{"frames": rng.integers(0, 256, (1, 6, 40, 52, 3), dtype=np.uint8)} for _ in range(2)],
             "text": [{"input_ids": np.ones((1, info.max_text_len), np.int64),
                       "attention_mask": np.ones((1, info.max_text_len), np.int64)}]}
    return {v: {k: make_variant(fp32[k], v, VariantOptions(calibration=feeds[k])) for k in fp32} for v in ALL}


@pytest.mark.parametrize("variant", ALL)
def test_every_variant_of_both_exporters_is_checker_valid_and_imports_only_what_it_uses(exporter_variants, variant):
    for path in exporter_variants[variant].values():
        assert_portable(path, variant)


def test_every_graph_an_export_lists_is_portable(five_variant_export, tiny_export):
    for export_dir in (five_variant_export[0], tiny_export):
        manifest = json.loads((export_dir / "manifest.json").read_text())
        listed = graphs_listed(manifest)
        assert {f for _, f in listed} == {p.name for p in export_dir.glob("*.onnx")}, "every graph file is listed"
        for variant, name in listed:
            assert_portable(export_dir / name, variant)


# ---- the check itself (export/validate.py) and the fp16 fix (quantize.sort_topologically), on hand-made graphs

def tiny_model(nodes, opsets=(("", 18),), functions=()) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                             functions=list(functions))


def chain() -> list:
    from onnx import helper

    return [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Neg", ["a"], ["y"], name="second")]


def test_check_graph_lists_every_problem_of_a_graph(tmp_path):
    from onnx import helper

    from export.validate import check_graph

    nodes = chain()[::-1] + [helper.make_node("FusedGemm", ["x", "x"], ["z"], domain="com.microsoft")]
    path = tmp_path / "video_encoder.onnx"
    onnx.save(tiny_model(nodes, [("", 18), ("com.microsoft", 1), ("ai.onnx.ml", 5)]), str(path))
    problems = check_graph(path, "fp32")
    assert len(problems) == 3 and all(p.startswith("video_encoder.onnx: ") for p in problems), problems
    assert "topologically sorted" in problems[0]
    assert "no node uses: ai.onnx.ml" in problems[1]
    assert "com.microsoft.FusedGemm" in problems[2] and "allows only ai.onnx" in problems[2]
    # int4's exception is MatMulNBits only, not any com.microsoft op
    assert any("FusedGemm" in p for p in check_graph(path, "int4"))


def test_strip_unused_opsets_keeps_domains_used_in_subgraphs_and_functions():
    from onnx import TensorProto, helper

    from export.validate import strip_unused_opsets

    body = helper.make_graph([helper.make_node("Inner", ["x"], ["b"], domain="com.sub")], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    fn = helper.make_function("com.fn", "F", ["i"], ["o"], [helper.make_node("Deep", ["i"], ["o"], domain="com.deep")],
                              [helper.make_opsetid("com.deep", 1)])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body),
             helper.make_node("F", ["x"], ["w"], domain="com.fn")]
    opsets = [("", 18), ("com.sub", 1), ("com.fn", 1), ("com.deep", 1), ("ai.onnx.ml", 5), ("org.pytorch.aten", 1)]
    model = tiny_model(nodes, opsets, [fn])
    assert sorted(strip_unused_opsets(model)) == ["ai.onnx.ml", "org.pytorch.aten"]
    assert [o.domain for o in model.opset_import] == ["", "com.sub", "com.fn", "com.deep"]


def test_sort_topologically_orders_nodes_and_subgraph_outer_reads_and_keeps_valid_order():
    from onnx import TensorProto, helper

    from export.quantize import sort_topologically

    body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "body", [],  # reads outer `a`
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    relu, neg = chain()
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True]))
    branch = helper.make_node("If", ["c"], ["y2"], then_branch=body, else_branch=body, name="if")
    model = tiny_model([branch, neg, cond, relu])  # as ORT's float16 tool leaves it: producers appended last
    sort_topologically(model.graph)
    order = [n.name or n.op_type for n in model.graph.node]
    assert order.index("first") < order.index("second") and order.index("first") < order.index("if")
    assert order.index("Constant") < order.index("if")
    ordered = tiny_model(chain())
    sort_topologically(ordered.graph)
    assert [n.name for n in ordered.graph.node] == ["first", "second"], "a valid order is kept as it is"


def test_a_failing_graph_check_is_a_listed_parity_failure(five_variant_export, merged, tiny_recipe, tmp_path):
    """The pipeline runs the check on every graph it writes: a bad file fails the variant's gate."""
    from onnx import helper

    from export import pipeline
    from export.parity import ParityInputs, torch_outputs
    from export.tokenize import encode_texts, load_tokenizer

    out, _ = five_variant_export
    _, model, _, info = merged
    files = {"video": "video_encoder.onnx", "text": "text_encoder.onnx"}
    for name in files.values():
        proto = onnx.load(str(out / name))
        if name.startswith("video"):
            proto.opset_import.append(helper.make_opsetid("org.pytorch.aten", 1))
        onnx.save(proto, str(tmp_path / name))
    clips = [np.random.default_rng(s).integers(0, 256, (5, 36, 40, 3), dtype=np.uint8) for s in range(2)]
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), ["a red circle", "a square"])
    inputs = ParityInputs(clips, ids, mask)
    refs = {"vs_trained": torch_outputs(model, inputs), "vs_merged": torch_outputs(model, inputs)}
    result = pipeline.check_files(tmp_path, files, "fp32", refs, inputs, tiny_recipe)
    assert not result["passed"]
    assert result["failures"] == ["fp32: video_encoder.onnx: imports opset domain(s) no node uses: org.pytorch.aten"]
    assert result["graphs"]["text"] == {"opset_imports": {"ai.onnx": 18}, "problems": []}


def test_export_parity_records_each_graphs_opset_imports(five_variant_export):
    from export.validate import check_export_dir

    out, parity = five_variant_export
    assert check_export_dir(out) and all(p == [] for p in check_export_dir(out).values())
    for name, v in parity["variants"].items():
        for kind in ("video", "text"):
            want = {"ai.onnx": 18} | ({"com.microsoft": 1} if name == "int4" else {})
            assert v["graphs"][kind] == {"opset_imports": want, "problems": []}, (name, kind)
    assert "graph check (onnx.checker full_check" in (out / "parity.md").read_text()


def test_check_export_dir_finds_unlisted_and_missing_graphs(tiny_export, tmp_path):
    import shutil

    from export.validate import check_export_dir

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    shutil.copyfile(copy / "video_encoder.onnx", copy / "vision.int8.onnx")  # a graph the manifest does not list
    (copy / "text_encoder.int8.onnx").unlink()
    found = check_export_dir(copy)
    assert found["vision.int8.onnx"] == [] and "video_encoder.int8.onnx" in found
    assert found["text_encoder.int8.onnx"] == ["text_encoder.int8.onnx: listed in manifest.json but missing"]
