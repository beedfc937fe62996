"""Where an ONNX graph's time goes: ONNX Runtime's profiler summed per op type, GEMM work and its throughput.

Shares of node time hold up on a loaded machine far better than absolute times (every kernel slows
down alike), so they are what `vqtool bench latency --profile` puts beside each variant.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Ops that are matrix products (their work is counted as GEMM operations); Conv is a GEMM too but kept apart,
# as ORT runs it with its own (float) kernel.
GEMM_OPS = ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "QLinearMatMul", "QGemm", "MatMulNBits")
INT8_GEMM_OPS = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm")


def profile_events(session_factory, feed: dict, runs: int) -> list[dict]:
    """Run a profiling session once to warm up and `runs` more times; the trace's events after the warm-up."""
    with tempfile.TemporaryDirectory(prefix="vqtool-profile-") as tmp:
        sess = session_factory(profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(runs + 1):
            sess.run(None, feed)
        trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        os.unlink(trace)
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(model_runs) < 2:
        return []
    start = model_runs[0]["ts"] + model_runs[0]["dur"]
    return [e for e in events if e.get("ts", 0) >= start]


def shape_of(entry: list) -> list[int]:
    """ORT writes each input as [{"float": [dims]}]; the dims of the `i`-th one."""
    return list(next(iter(entry.values()))) if entry else []


def gemm_ops(event: dict) -> float:
    """Multiply-add operations (2 per MAC) of a GEMM-like node, from the shapes in its profile event."""
    args = event.get("args", {})
    ins, outs = args.get("input_type_shape", []), args.get("output_type_shape", [])
    if not ins or not outs:
        return 0.0
    out, a = shape_of(outs[0]), shape_of(ins[0])
    if args.get("op_name") == "Conv":
        weight = shape_of(ins[1]) if len(ins) > 1 else []
        return 2.0 * float(np.prod(out)) * float(np.prod(weight[1:])) if weight else 0.0
    return 2.0 * float(np.prod(out)) * a[-1] if a else 0.0


def summarize(events: list[dict], runs: int) -> dict:
    """Per op type: ms per run and share of node time; GEMM time, share, operations and throughput."""
    node_us: dict[str, float] = {}
    gemm_gop = int8_gop = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        node_us[op] = node_us.get(op, 0.0) + e["dur"]
        if op in GEMM_OPS or op == "Conv":
            gop = gemm_ops(e) / 1e9
            gemm_gop += gop
            int8_gop += gop if op in INT8_GEMM_OPS else 0.0
    total = sum(node_us.values()) or 1.0
    run_ms = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"]
    ops = {op: {"ms": us / runs / 1e3, "share": us / total}
           for op, us in sorted(node_us.items(), key=lambda kv: -kv[1])}
    gemm_ms = sum(v["ms"] for op, v in ops.items() if op in GEMM_OPS)
    int8_ms = sum(v["ms"] for op, v in ops.items() if op in INT8_GEMM_OPS)
    return {"runs": runs, "model_run_ms": float(np.median(run_ms)) if run_ms else None,
            "node_ms": total / runs / 1e3, "ops": ops, "gemm_ms": gemm_ms, "gemm_share": gemm_ms / (total / runs / 1e3),
            "gemm_gop": gemm_gop / runs, "int8_gemm_gop": int8_gop / runs, "int8_gemm_ms": int8_ms,
            "gemm_gops": (gemm_gop / runs) / (gemm_ms / 1e3) if gemm_ms else None}


def profile_graph(path: Path, feed: dict, threads: int, runs: int = 5) -> dict:
    """ONNX Runtime's profile of one graph on `feed` (CPU provider, `threads` intra-op threads)."""
    import onnxruntime as ort

    def factory(profile_prefix: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    return summarize(profile_events(factory, feed, runs), runs)


def int8_gemm_probe(tmp: Path, m: int, k: int, n: int):
    """A one-MatMul graph [m, k] x [k, n] quantized by the same dynamic int8 path as the `int8` variant.

    Timed beside the variants it gives the int8 GEMM throughput this machine reaches right now (the
    roofline the whole graph is measured against). Returns (path, feed, operations per run).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.quantize import quantize_int8_dynamic

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.05, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    fp32 = tmp / "gemm_probe.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(fp32))
    int8 = quantize_int8_dynamic(fp32, tmp / "gemm_probe.int8.onnx")
    return int8, {"x": rng.standard_normal((m, k)).astype(np.float32)}, 2.0 * m * k * n


def top_ops(profile: dict, count: int = 6) -> str:
    """'DynamicQuantizeMatMul 56%, MatMulIntegerToFloat 15%, ...' for a table cell."""
    return ", ".join(f"{op} {100 * v['share']:.0f}%" for op, v in list(profile["ops"].items())[:count])


def markdown(result: dict) -> str:
    """Per variant: the op types by share of node time (ms per run beside), GEMM share and throughput."""
    rows = {name: v["profile"] for name, v in result["variants"].items() if v.get("profile")}
    if not rows:
        return ""
    lines = ["", f"ONNX Runtime profile (node time per run summed by op type, {next(iter(rows.values()))['runs']} "
             "profiled runs after a warm-up, a separate session from the timed one):", "",
             "| variant | node ms | GEMM share | GEMM GOP/s | op types by share |", "|---|---:|---:|---:|---|"]
    for name, p in rows.items():
        gops = f"{p['gemm_gops']:.0f}" if p.get("gemm_gops") else "–"
        lines.append(f"| {name} | {p['node_ms']:.1f} | {100 * p['gemm_share']:.1f}% | {gops} | {top_ops(p, 10)} |")
    roof = result.get("roofline")
    if roof:
        lines += ["", f"int8 GEMM roofline: a lone dynamic-int8 MatMul [{roof['probe_shape']}] ran at "
                  f"{roof['peak_gops']:.0f} GOP/s (p50, timed alone right after the variants); the encoder's "
                  f"{roof['encoder_gop']:.3g} GOP at that rate take {roof['roofline_ms']:.1f} ms."
                  + (f" Inside the int8 graph its int8 GEMM kernels ran at {roof['int8_graph_gemm_gops']:.0f} GOP/s "
                     f"({100 * roof['int8_graph_gemm_gops'] / roof['peak_gops']:.0f}% of the probe; profiler)."
                     if roof.get("int8_graph_gemm_gops") else ""), "",
                  "| variant | p50 ms | roofline ms / p50 ms |", "|---|---:|---:|"]
        lines += [f"| {name} | {v['p50_ms']:.1f} | {100 * v['roofline_fraction']:.1f}% |"
                  for name, v in roof["variants"].items()]
    return "\n".join(lines) + "\n"
