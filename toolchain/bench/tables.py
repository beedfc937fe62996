"""Markdown table of an ablation's results.csv rows (one row per grid cell)."""

from __future__ import annotations


def number(value, digits: int = 1) -> str:
    if value in (None, ""):
        return "–"
    return f"{float(value):.{digits}f}"


def results_markdown(rows: list[dict], grid: dict, steps: int, recipe_name: str) -> str:
    axes = ", ".join(f"{a} = {', '.join(map(str, v))}" for a, v in grid.items())
    lines = [
        f"Ablation of `{recipe_name}`: {axes}; {steps} fine-tuning steps per cell, one fresh process per cell.",
        "R@1 on the eval split after fine-tuning; train peak = peak memory of the training loop alone "
        "(RSS high-water mark on CPU, CUDA allocator peak on GPU); step s = training time / steps.",
        "",
        "| quant | rank | placement | K | t2v R@1 | v2t R@1 | direction R@1 | train peak MB | step s | trainable params |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['quant']} | {r['rank']} | {r['placement']} | {r['frames']} | {number(r['t2v_r1'])} | "
                     f"{number(r['v2t_r1'])} | {number(r['direction_r1'])} | {number(r['train_peak_mb'], 0)} | "
                     f"{number(r['step_s'], 3)} | {int(r['trainable_params']):,} |")
    return "\n".join(lines) + "\n"
