"""parity.md: the parity report as tables a person reads at a glance."""

from __future__ import annotations

FP16_NOTE = ("fp16 is meant for GPUs (CUDA/TensorRT); these numbers are ONNX Runtime on CPU, which lacks "
             "float16 kernels for many ops and inserts casts, so it is at best about as fast as fp32 here. "
             "Its speed is not gated.")


def tie_note(retrieval: dict) -> str:
    ties = retrieval.get("near_tie_flips", 0)
    return f" ({ties} near-tie flip{'s' * (ties != 1)}, not gated)" if ties else ""


def accuracy_rows(report: dict) -> list[str]:
    lines = [
        "| variant | size MB | vs fp32 | video min cos (as-trained / merged) | text min cos (as-trained / merged) "
        "| frames agree (±1 LSB noise) | t2v R@1 torch → onnx | gate |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in report["variants"].items():
        m, ret = v["vs_merged"], v["retrieval"]
        lines.append(
            f"| {name} | {v['size_mb']:.2f} | {100 * v['size_vs_fp32']:.0f}% | "
            f"{v['video']['min_cosine']:.6f} / {m['video']['min_cosine']:.6f} | "
            f"{v['text']['min_cosine']:.6f} / {m['text']['min_cosine']:.6f} | "
            f"{100 * v['video']['frame_index_agreement']:.0f}% ({100 * v['video']['frame_index_agreement_lsb_noise']:.0f}%) | "
            f"{ret['t2v_r1_torch']:.1f} → {ret['t2v_r1_onnx']:.1f}{tie_note(ret)} | {'pass' if v['passed'] else 'FAIL'} |"
        )
    return lines


def latency_rows(report: dict) -> list[str]:
    t = report["torch_latency_ms"]
    lines = [
        "| video encoder | p50 ms | p95 ms | mean ms | speedup vs torch merged fp32 | speedup vs torch as trained |",
        "|---|---:|---:|---:|---:|---:|",
        f"| torch eager, merged fp32 | {t['merged_fp32']['p50']:.2f} | {t['merged_fp32']['p95']:.2f} | "
        f"{t['merged_fp32']['mean']:.2f} | 1.00× | – |",
        f"| torch eager, as trained | {t['as_trained']['p50']:.2f} | {t['as_trained']['p95']:.2f} | "
        f"{t['as_trained']['mean']:.2f} | – | 1.00× |",
    ]
    for name, v in report["variants"].items():
        lat = v["latency_ms"]
        lines.append(f"| onnx {name} | {lat['onnx_p50']:.2f} | {lat['onnx_p95']:.2f} | {lat['onnx_mean']:.2f} | "
                     f"{lat['speedup']:.2f}× | {lat['speedup_vs_trained']:.2f}× |")
    return lines


def scoring_note(report: dict) -> list[str]:
    """X-CLIP: how the exported scores compare with the trained model's video-conditioned ones."""
    scoring = report.get("scoring")
    if not scoring:
        return []
    if not scoring["exported"]:
        return [f"- scoring: X-CLIP's prompt generator could not be exported ({scoring['reason']}); the ONNX "
                "scores are plain dot products, compared above with the trained model's conditioned scores"]
    diffs = ", ".join(f"{name} {v['scores']['max_abs_diff']:.2g} (top-1 agreement "
                      f"{100 * v['retrieval']['t2v_top1_agreement']:.0f}%)" for name, v in report["variants"].items())
    return [f"- scoring: captions conditioned on each video by X-CLIP's prompt generator (scorer graph); "
            f"scores max abs diff vs PyTorch as trained: {diffs}"]


def notes(report: dict) -> list[str]:
    out = scoring_note(report)
    for name, v in report["variants"].items():
        if name == "int4":
            out.append(int4_note(v))
        if name == "int8-static":
            split = v["settings"].get("calibration_split", "eval")
            out.append(f"- int8-static: QDQ, MinMax calibration on {v['settings']['calibration_clips']} {split} clips "
                       "(raw frames through the fused selector); MatMul/Gemm/Conv inputs quantized, outputs left float")
        if name == "fp16":
            out.append(f"- {FP16_NOTE}")
    return out


def try_cosine(t: dict) -> str:
    return format(t["min_cosine"], ".4f") if "min_cosine" in t else "quantizer error"


def int4_note(v: dict) -> str:
    """The kept int4 plan and how many plans the search tried (each one is in parity.json's `tried`)."""
    s = v["settings"]
    kept8 = sum(len(names) for names in s.get("int8_matmuls", {}).values())
    tried = v.get("tried", [])
    passed = [t for t in tried if t["passed"]]
    search = (f"; {len(tried)} plan(s) tried smallest first, " + ("the first passing one kept" if passed else "none passed, the best kept")
              + f" (worst cosines: {', '.join(try_cosine(t) for t in tried)})") if tried else ""
    return (f"- int4: MatMulNBits {s.get('algorithm', 'rtn')}, block {s['block_size']}, "
            f"{'symmetric' if s['symmetric'] else 'asymmetric'}, accuracy level {s['accuracy_level']}, "
            f"{kept8} MatMul(s) at 8 bits" + search)


def graph_notes(report: dict) -> list[str]:
    """One line: the graph check's verdict and each variant's opset imports (from parity.json "graphs")."""
    checked = {n: v["graphs"] for n, v in report["variants"].items() if "graphs" in v}
    if not checked:
        return []
    clean = all(not g["problems"] for graphs in checked.values() for g in graphs.values())
    imports = "; ".join(f"{n}: " + ", ".join(f"{d} {ver}" for d, ver in graphs["video"]["opset_imports"].items())
                        for n, graphs in checked.items())
    verdict = "every graph passes" if clean else "FAILED on some graphs (listed below)"
    return [f"- graph check (onnx.checker full_check, opset imports = domains the nodes use): {verdict}. "
            f"Opset imports: {imports}"]


def cell(metrics: dict, key: str, spec: str) -> str:
    return format(metrics[key], spec) if key in metrics else "–"


def runtime_rows(report: dict) -> list[str]:
    """A second runtime vs ONNX Runtime on the same graphs and clips (`vqtool export --check-runtime`)."""
    lines = []
    for name, r in report.get("runtimes", {}).items():
        lines += ["", f"Second runtime: {name} {r.get('version', '')} on {r.get('device', '')} "
                  f"(inference precision {r.get('inference_precision', '?')}) vs {r['reference']}, "
                  f"on the {r['inputs'].get('video', 0)} eval clips.", "",
                  "| variant | video min cos | video max abs | frames agree | text min cos | gate (min cos) | result |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for variant, v in r["variants"].items():
            vid = v.get("video", {}).get("outputs", {})
            emb, idx = vid.get("video_embeds", {}), vid.get("frame_indices", {})
            txt = v.get("text", {}).get("outputs", {}).get("text_embeds", {})
            agree = f"{100 * idx['agreement']:.0f}%" if "agreement" in idx else "–"
            lines.append(f"| {variant} | {cell(emb, 'min_cosine', '.6f')} | {cell(emb, 'max_abs_diff', '.2g')} | "
                         f"{agree} | {cell(txt, 'min_cosine', '.6f')} | {v['min_cosine_gate']} | "
                         f"{'pass' if v['passed'] else 'FAIL'} |")
    return lines


def parity_markdown(report: dict) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    first = next(iter(report["variants"].values()))["latency_ms"]
    lines = [
        f"# Parity report: {verdict}",
        "",
        f"References: PyTorch as trained (quantized base + adapters) and the merged float32 PyTorch model. "
        f"Eval clips: {report['eval_clips']}. Threads: {report['threads']}. Frame selector: {report['selector']}, "
        f"K = {report['k']}. Exporter: {report['exporter']}.",
        "",
        *accuracy_rows(report),
        "",
        f"Latency: one eval clip, {first['runs']} interleaved runs after warm-up, same thread count.",
        "",
        *latency_rows(report),
        *runtime_rows(report),
    ]
    extra = notes(report) + graph_notes(report)
    if extra:
        lines += ["", *extra]
    failures = [f for v in report["variants"].values() for f in v["failures"]]
    failures += [f for r in report.get("runtimes", {}).values() for f in r["failures"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"
