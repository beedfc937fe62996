"""Ablation: uniform vs manual vs importance rank allocation at the same adapter budget.

Run: python scripts/ablate_ranks.py [--recipe recipes/shapes-tiny.yaml] [--budgets 25824,68864]
     [--out runs/ablate-ranks] [--set KEY=VALUE ...]
Each arm is a real `finetune` of the recipe with only adapters.ranks changed. The budgets default
to the recipe's uniform rank 3 and rank 8 (multiples of one rank everywhere, so uniform meets them
exactly); the table (markdown) and rows (JSON) go to --out. Finished arms are not run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.errors import RecipeError
from toolchain.progress import Reporter
from toolchain.quiet import quiet_libraries
from toolchain.recipe import load_recipe
from toolchain.train import finetune

ARMS = {
    "uniform": ["adapters.ranks.strategy=uniform"],
    "manual v.6/t.2/f.2": ["adapters.ranks.strategy=manual",
                           "adapters.ranks.shares={vision: 0.6, text: 0.2, fusion: 0.2}"],
    "manual v.2/t.6/f.2": ["adapters.ranks.strategy=manual",
                           "adapters.ranks.shares={vision: 0.2, text: 0.6, fusion: 0.2}"],
    "importance": ["adapters.ranks.strategy=importance"],
}


def row(arm: str, budget: int, result: dict, ranks: dict) -> dict:
    ft = result["finetuned"]
    groups = {g: v["params"] for g, v in ranks["groups"].items()}
    return {"arm": arm, "budget": budget, "trainable_params": result["trainable_params"],
            "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"], "direction_r1": ft.get("t2v_within_group_r1"),
            "group_params": groups, "train_seconds": result["train_seconds"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| budget | arm | trainable params | vision / text / fusion params | t2v R@1 | v2t R@1 | direction R@1 |",
             "|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        g = r["group_params"]
        split = " / ".join(f"{g.get(k, 0):,}" for k in ("vision", "text", "fusion"))
        lines.append(f"| {r['budget']:,} | {r['arm']} | {r['trainable_params']:,} | {split} | "
                     f"{r['t2v_r1']:.1f} | {r['v2t_r1']:.1f} | {r['direction_r1']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--budgets", default="25824,68864")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate-ranks"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    quiet_libraries()
    report = Reporter()
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "results.json"
    rows = json.loads(done_file.read_text()) if done_file.is_file() else []
    for budget in [int(b) for b in args.budgets.split(",")]:
        for arm, sets in ARMS.items():
            if any(r["arm"] == arm and r["budget"] == budget for r in rows):
                continue
            report.say(f"== budget {budget:,}: {arm}")
            recipe = load_recipe(args.recipe, args.overrides + sets + [f"adapters.ranks.budget={budget}"])
            run_dir = args.out / f"{budget}-{arm.replace(' ', '_').replace('/', '-')}"
            try:
                result = finetune(recipe, run_dir, True, report)
            except RecipeError as exc:  # an allocation this budget cannot meet: say so, run the rest
                report.warn(f"{arm} at budget {budget:,}: {exc}")
                continue
            rows.append(row(arm, budget, result, json.loads((run_dir / "ranks.json").read_text())))
            done_file.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
