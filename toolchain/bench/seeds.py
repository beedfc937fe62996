"""Ablations over several seeds: mean and spread per cell, and which differences exceed the spread.

An ablation row is a dict with an arm name, a "seed" and metrics. `summarise` groups rows by arm;
`spread_markdown` prints "mean (min–max)" per metric; `verdicts` compares each arm with a reference arm
and says whether the two arms' seed ranges are apart (a difference the seeds cannot explain) or overlap.
Torch-free, so the ablation scripts and the tests share it.
"""

from __future__ import annotations

import statistics


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """"0,1,2" -> [0, 1, 2]; the error names the flag and the fix."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes whole numbers separated by commas, e.g. 0,1,2 (got {text!r})") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{flag} needs at least one number and no repeats, e.g. 0,1,2 (got {text!r})")
    return seeds


def summarise(rows: list[dict], arm_key: str, metrics: list[str]) -> list[dict]:
    """One entry per arm (in first-seen order): its seeds and, per metric, mean/min/max/values."""
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r[arm_key], []).append(r)
    out = []
    for arm, group in arms.items():
        entry = {"arm": arm, "seeds": [r["seed"] for r in group]}
        for m in metrics:
            values = [float(r[m]) for r in group if r.get(m) is not None]
            entry[m] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                        "values": values} if values else None
        out.append(entry)
    return out


def cell(stat: dict | None) -> str:
    """"97.9 (95.8–100.0)", or the value alone for one seed; "–" without one."""
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ({stat['min']:.1f}–{stat['max']:.1f})"


def spread_markdown(summary: list[dict], metrics: dict[str, str], fixed: dict[str, dict[str, str]] | None = None) -> str:
    """A table: arm, seeds, any fixed columns (label -> {arm: text}), then "mean (min–max)" per metric
    (metrics: key -> column label)."""
    fixed = fixed or {}
    lines = ["| arm | seeds | " + "".join(f"{label} | " for label in fixed) + " | ".join(metrics.values()) + " |",
             "|---|---|" + "---:|" * (len(fixed) + len(metrics))]
    for s in summary:
        seeds = ",".join(str(x) for x in s["seeds"])
        extra = "".join(f"{col.get(s['arm'], '–')} | " for col in fixed.values())
        lines.append(f"| {s['arm']} | {seeds} | {extra}" + " | ".join(cell(s[m]) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def verdict(arm: dict, ref: dict, metric: str) -> str:
    """One line: the mean difference and whether the two arms' seed ranges are apart."""
    a, b = arm[metric], ref[metric]
    if a is None or b is None:
        return f"- {arm['arm']} vs {ref['arm']}: no {metric} to compare"
    diff = a["mean"] - b["mean"]
    if len(a["values"]) < 2 or len(b["values"]) < 2:
        call = "one seed on a side, so no spread to compare with"
    elif a["min"] > b["max"] or a["max"] < b["min"]:
        call = "exceeds the seed spread (the ranges do not overlap)"
    else:
        call = "within the seed spread (the ranges overlap)"
    return f"- {arm['arm']} vs {ref['arm']}: {diff:+.1f} points of {metric}; {call}"


def verdicts(summary: list[dict], reference: str, metric: str) -> list[str]:
    """Every other arm against the reference arm, on one metric."""
    ref = next((s for s in summary if s["arm"] == reference), None)
    if ref is None:
        raise ValueError(f"reference arm {reference!r} is not among {[s['arm'] for s in summary]}")
    return [verdict(s, ref, metric) for s in summary if s["arm"] != reference]
