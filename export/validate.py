"""The portable-graph check of any exported .onnx: onnx.checker (full_check) and opset imports = domains used.

The graph contract (docs: DESIGN "Graph contracts"): standard ONNX ops only, so CPU, CUDA, TensorRT and
other runtimes load the file; int4's com.microsoft MatMulNBits is the one exception. A file passes
when the checker accepts it with full shape inference, it imports exactly the opset domains its
nodes use, and every node outside ai.onnx is an allowed exception for its variant. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

DEFAULT_DOMAIN = ""  # ai.onnx; ONNX writes it as "" (and accepts "ai.onnx" for the same domain)
# Nodes outside ai.onnx that a variant may hold: (domain, op type).
ALLOWED_CUSTOM_OPS = {"int4": {("com.microsoft", "MatMulNBits")}}
# a graph made for the `cpu` export target (metadata vqtool.target = cpu) may also hold these
CPU_TARGET_OPS = {("com.microsoft", "MultiHeadAttention"), ("com.microsoft", "SkipLayerNormalization")}


def domain_of(name: str) -> str:
    return DEFAULT_DOMAIN if name == "ai.onnx" else name


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of If / Loop / Scan and any other graph-valued attribute."""
    out = []
    for attr in node.attribute:
        out += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    return out


def all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node: the main graph, its subgraphs at any depth, and the model's local functions."""
    todo = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    nodes = []
    while todo:
        for node in todo.pop():
            nodes.append(node)
            todo += [list(g.node) for g in subgraphs(node)]
    return nodes


def used_domains(model: onnx.ModelProto) -> set[str]:
    """Opset domains the nodes use, plus ai.onnx (always imported: a graph without it is no ONNX graph)."""
    return {DEFAULT_DOMAIN} | {domain_of(n.domain) for n in all_nodes(model)}


def strip_unused_opsets(model: onnx.ModelProto) -> list[str]:
    """Drop opset imports no node uses (ORT's offline optimisation writes seven); returns the dropped ones."""
    used = used_domains(model)
    keep = [o for o in model.opset_import if domain_of(o.domain) in used]
    dropped = [o.domain for o in model.opset_import if domain_of(o.domain) not in used]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return dropped


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    return {domain_of(o.domain) or "ai.onnx": o.version for o in model.opset_import}


def custom_op_problems(model: onnx.ModelProto, variant: str) -> list[str]:
    allowed = ALLOWED_CUSTOM_OPS.get(variant, set())
    cpu_target = any(p.key == "vqtool.target" and p.value == "cpu" for p in model.metadata_props)
    allowed = allowed | CPU_TARGET_OPS if cpu_target else allowed
    found = {(domain_of(n.domain), n.op_type) for n in all_nodes(model) if domain_of(n.domain) != DEFAULT_DOMAIN}
    bad = sorted(found - allowed)
    if not bad:
        return []
    names = ", ".join(f"{d}.{op}" for d, op in bad)
    allow = ", ".join(f"{d}.{op}" for d, op in sorted(allowed)) or "none"
    return [f"uses non-standard op(s) {names}; the {'cpu target' if cpu_target else 'portable contract'} allows "
            f"only ai.onnx ops (for {variant}, also: {allow})"]


def check_graph(path: Path, variant: str = "fp32") -> list[str]:
    """Every problem with one graph file, as sentences naming it (an empty list: the file is portable)."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: works past protobuf's 2 GB too
        problems = []
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems = [f"onnx.checker (full_check) rejects it: {' '.join(str(exc).split())[:400]}"]
    model = onnx.load(str(path), load_external_data=False)
    unused = sorted(opset_imports(model).keys() - {domain_of(d) or "ai.onnx" for d in used_domains(model)})
    if unused:
        problems.append(f"imports opset domain(s) no node uses: {', '.join(unused)}")
    problems += custom_op_problems(model, variant)
    return [f"{path.name}: {p}" for p in problems]


def graph_report(path: Path, variant: str) -> dict:
    """What parity.json records for a graph: its opset imports and its problems (empty: it passed)."""
    model = onnx.load(str(path), load_external_data=False)
    return {"opset_imports": opset_imports(model), "problems": check_graph(path, variant)}


def variant_of_file(name: str) -> str:
    """video_encoder.int8-static.onnx -> int8-static; a plain name is fp32 (quantize.variant_path's rule)."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 2 else "fp32"


def listed_graphs(manifest: dict) -> dict[str, str]:
    """file name -> variant for every .onnx an export manifest lists, whatever its graphs are called."""
    out = {}
    for variant, files in manifest.get("variants", {}).items():
        for value in files.values() if isinstance(files, dict) else []:
            if isinstance(value, str) and value.endswith(".onnx"):
                out[value] = variant
    return out


def check_export_dir(export_dir: Path) -> dict[str, list[str]]:
    """Every graph of an export dir (listed in its manifest or lying there) -> its problems."""
    export_dir = Path(export_dir)
    manifest_path = export_dir / "manifest.json"
    listed = listed_graphs(json.loads(manifest_path.read_text())) if manifest_path.is_file() else {}
    names = sorted(set(listed) | {p.name for p in export_dir.glob("*.onnx")})
    results = {}
    for name in names:
        if not (export_dir / name).is_file():
            results[name] = [f"{name}: listed in {manifest_path.name} but missing"]
            continue
        results[name] = check_graph(export_dir / name, listed.get(name, variant_of_file(name)))
    return results
