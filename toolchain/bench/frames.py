"""`vqtool bench frames`: accuracy of each selector at each K, encoder latency vs K, selection's share."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from toolchain.recipe import load_recipe


class PrepareOnly(torch.nn.Module):
    """The graph's front: selection, gather, crop, resize, normalise — no encoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames):
        pixels, idx, motion = self.model.prepare_frames(frames)
        return pixels, idx, motion


def accuracy_rows(recipe_path: str, overrides: list[str], selectors, ks, steps: int, report,
                  seeds: list[int] | None = None) -> list[dict]:
    """One short fine-tune per selector x K (x seed: None runs the recipe's seed once, unlabelled)."""
    from toolchain.train import finetune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds or [None]:
            seed_sets = [] if seed is None else [f"train.seed={seed}"]
            for sel in selectors:
                for k in ks:
                    sets = [*overrides, *seed_sets, f"frames.selector={sel}", f"frames.k={k}", f"train.max_steps={steps}"]
                    report.say(f"== selector {sel}, K={k}" + ("" if seed is None else f", seed {seed}"))
                    result = finetune(load_recipe(recipe_path, sets), Path(tmp) / f"{sel}-{k}-{seed}", True, report)
                    ft = result["finetuned"]
                    rows.append({"selector": sel, "k": k, "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"],
                                 "direction_r1": ft.get("t2v_within_group_r1"), "steps": steps}
                                | ({} if seed is None else {"seed": seed, "cell": f"{sel} K={k}"}))
    return rows


def seeds_markdown(acc: list[dict]) -> list[str]:
    """Rows over several seeds: mean (min–max) per selector x K, and each selector against uniform at its K."""
    from toolchain.bench.seeds import spread_markdown, summarise, verdicts

    summary = summarise(acc, "cell", ["t2v_r1", "direction_r1"])
    out = [spread_markdown(summary, {"t2v_r1": "t2v R@1", "direction_r1": "direction R@1"})]
    for k in dict.fromkeys(r["k"] for r in acc):
        same = [s for s in summary if s["arm"].endswith(f" K={k}")]
        if any(s["arm"] == f"uniform K={k}" for s in same):
            out += verdicts(same, f"uniform K={k}", "direction_r1")
    return out + [""]


def ort_p50(path: Path, frames: np.ndarray, threads: int, runs: int) -> float:
    import onnxruntime as ort

    from export.parity import time_ms

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return float(np.median(time_ms(lambda: sess.run(None, {"frames": frames}), runs)))


def latency_rows(arch: str, ks, selector: str, threads: int, runs: int, clip_shape, report) -> list[dict]:
    """ONNX Runtime p50 of the whole video graph and of its front (selection + preprocessing) alone."""
    from export.onnx_export import dims, export_onnx, export_video_encoder
    from toolchain.models.archs import build_arch

    frames = np.random.default_rng(0).integers(0, 256, size=(1, *clip_shape, 3), dtype=np.uint8)
    example = (torch.from_numpy(frames),)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, report.task("latency vs K", len(ks)) as step:
        for k in ks:
            model = build_arch(arch, k, selector)
            full = export_video_encoder(model, Path(tmp) / f"full-{k}.onnx", 18, {})
            front = export_onnx(PrepareOnly(model), example, Path(tmp) / f"front-{k}.onnx", ["frames"],
                                ["pixels", "frame_indices", "motion"],
                                {"frames": dims("batch", "num_frames", "height", "width")}, 18)
            full_ms, front_ms = ort_p50(full, frames, threads, runs), ort_p50(front, frames, threads, runs)
            rows.append({"arch": arch, "k": k, "selector": selector, "encoder_p50_ms": full_ms,
                         "selection_preprocess_p50_ms": front_ms, "selection_share": front_ms / full_ms})
            step(1, f"K={k}")
    return rows


def markdown(acc: list[dict], lat: list[dict], clip_shape, threads: int) -> str:
    out = []
    if acc and "seed" in acc[0]:
        out += seeds_markdown(acc)
    elif acc:
        ks = sorted({r["k"] for r in acc})
        out += ["| selector | " + " | ".join(f"K={k} t2v R@1 (dir)" for k in ks) + " |",
                "|---|" + "---:|" * len(ks)]
        for sel in dict.fromkeys(r["selector"] for r in acc):
            cells = {r["k"]: r for r in acc if r["selector"] == sel}
            out.append(f"| {sel} | " + " | ".join(
                f"{cells[k]['t2v_r1']:.1f} ({cells[k]['direction_r1']:.1f})" for k in ks) + " |")
        out.append("")
    if lat:
        n, h, w = clip_shape
        out += [f"Input: one clip of {n} frames at {h}x{w}, ONNX Runtime CPU, {threads} threads.", "",
                "| arch | K | video graph p50 ms | selection + preprocessing p50 ms | share |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {r['arch']} | {r['k']} | {r['encoder_p50_ms']:.2f} | {r['selection_preprocess_p50_ms']:.2f} | "
                f"{100 * r['selection_share']:.1f}% |" for r in lat]
    return "\n".join(out) + "\n"
