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
