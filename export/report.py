"""parity.md: the parity report as a table a person reads at a glance."""

from __future__ import annotations


def parity_markdown(report: dict) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Parity report: {verdict}",
        "",
        f"Reference: {report['reference']}. Eval clips: {report['eval_clips']}. Threads: {report['threads']}. "
        f"Frame selector: {report['selector']}, K = {report['k']}.",
        "",
        "| variant | size MB | video min cos | text min cos | frames agree (±1 LSB noise) | t2v R@1 torch → onnx | "
        "torch p50 ms | onnx p50 ms | onnx p95 ms | speedup | gate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in report["variants"].items():
        lat, ret = v["latency_ms"], v["retrieval"]
        lines.append(
            f"| {name} | {v['size_mb']:.2f} | {v['video']['min_cosine']:.6f} | {v['text']['min_cosine']:.6f} | "
            f"{100 * v['video']['frame_index_agreement']:.0f}% ({100 * v['video']['frame_index_agreement_lsb_noise']:.0f}%) | {ret['t2v_r1_torch']:.1f} → {ret['t2v_r1_onnx']:.1f} | "
            f"{lat['torch_p50']:.2f} | {lat['onnx_p50']:.2f} | {lat['onnx_p95']:.2f} | {lat['speedup']:.2f}× | "
            f"{'pass' if v['passed'] else 'FAIL'} |"
        )
    failures = [f for v in report["variants"].values() for f in v["failures"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"
