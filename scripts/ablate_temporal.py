"""Ablation: plain LoRA vs temporal LoRA (each gate mode) on the synthetic shapes, same recipe otherwise.

Run: python scripts/ablate_temporal.py [--recipe recipes/shapes-tiny.yaml] [--out runs/ablate-temporal]
     [--set KEY=VALUE ...]
Each arm is a real `finetune` of the recipe; the table (markdown) and rows (JSON) go to --out.
Plain LoRA runs at the recipe's rank and one rank higher, so it gets at least the temporal arms'
trainable-parameter budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.progress import Reporter
from toolchain.quiet import quiet_libraries
from toolchain.recipe import load_recipe
from toolchain.train import finetune


def arms(rank: int) -> dict[str, list[str]]:
    plain = ["adapters.temporal.enabled=false"]
    temporal = ["adapters.temporal.enabled=true"]
    out = {f"plain r={rank}": plain, f"plain r={rank + 1}": plain + [f"adapters.rank={rank + 1}",
                                                                     f"adapters.alpha={2 * (rank + 1)}"]}
    for gate in ("none", "motion", "position", "both"):
        out[f"temporal gate={gate}"] = temporal + [f"adapters.temporal.gate={gate}"]
    return out


def row(name: str, result: dict) -> dict:
    ft, base = result["finetuned"], result["base"]
    return {"arm": name, "trainable_params": result["trainable_params"],
            "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"], "direction_r1": ft["t2v_within_group_r1"],
            "base_t2v_r1": base["t2v"]["r1"], "base_direction_r1": base["t2v_within_group_r1"],
            "train_seconds": result["train_seconds"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| arm | trainable params | t2v R@1 | v2t R@1 | direction R@1 (chance 25) | train s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['trainable_params']:,} | {r['t2v_r1']:.1f} | {r['v2t_r1']:.1f} | "
                     f"{r['direction_r1']:.1f} | {r['train_seconds']:.0f} |")
    base = rows[0]
    lines.append(f"| base (no fine-tuning) | 0 | {base['base_t2v_r1']:.1f} | – | {base['base_direction_r1']:.1f} | – |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate-temporal"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    quiet_libraries()
    rank = load_recipe(args.recipe, args.overrides).adapters.rank
    rows, report = [], Reporter()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, sets in arms(rank).items():
        report.say(f"== {name}")
        recipe = load_recipe(args.recipe, args.overrides + sets)
        run_dir = args.out / name.replace(" ", "_").replace("=", "-")
        rows.append(row(name, finetune(recipe, run_dir, True, report)))
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
