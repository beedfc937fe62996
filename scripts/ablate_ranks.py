"""Ablation: uniform vs manual vs importance rank allocation at the same adapter budget.

Run: python scripts/ablate_ranks.py [--recipe recipes/shapes-tiny.yaml] [--budgets 25248,67328]
     [--seeds 0,1,2] [--out runs/ablate-ranks] [--set KEY=VALUE ...]
Each arm is a real `finetune` of the recipe with only adapters.ranks changed, once per seed. The
budgets default to the recipe's uniform rank 3 and rank 8 (multiples of one rank everywhere, so
uniform meets them exactly); the table (markdown: mean and min-max over the seeds, then which arms
differ from uniform at the same budget by more than the seed spread) and the rows (JSON) go to
--out. Finished runs are not run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.bench.seeds import parse_seeds, spread_markdown, summarise, verdicts
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


METRICS = {"t2v_r1": "t2v R@1", "v2t_r1": "v2t R@1", "direction_r1": "direction R@1"}


def row(arm: str, budget: int, seed: int, result: dict, ranks: dict) -> dict:
    ft = result["finetuned"]
    groups = {g: v["params"] for g, v in ranks["groups"].items()}
    return {"arm": arm, "budget": budget, "seed": seed, "cell": f"{budget:,}: {arm}",
            "trainable_params": result["trainable_params"], "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"],
            "direction_r1": ft.get("t2v_within_group_r1"), "group_params": groups,
            "train_seconds": result["train_seconds"]}


def markdown(rows: list[dict]) -> str:
    summary = summarise(rows, "cell", list(METRICS))
    split: dict[str, str] = {}  # the first seed's split (only importance's can move with the seed)
    for r in rows:
        split.setdefault(r["cell"], " / ".join(f"{r['group_params'].get(k, 0):,}" for k in ("vision", "text", "fusion")))
    lines = [spread_markdown(summary, METRICS, {"vision / text / fusion params": split})]
    for budget in dict.fromkeys(r["budget"] for r in rows):
        ref = f"{budget:,}: uniform"
        same = [s for s in summary if s["arm"].startswith(f"{budget:,}: ")]
        if any(s["arm"] == ref for s in same):
            lines += verdicts(same, ref, "t2v_r1") + verdicts(same, ref, "direction_r1")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--budgets", default="25248,67328")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate-ranks"))
    ap.add_argument("--seeds", default=None, help="training seeds, comma list, e.g. 0,1,2 (default: the recipe's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    quiet_libraries()
    seeds = parse_seeds(args.seeds) if args.seeds else [load_recipe(args.recipe, args.overrides).train.seed]
    report = Reporter()
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "results.json"
    rows = json.loads(done_file.read_text()) if done_file.is_file() else []
    for seed in seeds:
        for budget in [int(b) for b in args.budgets.split(",")]:
            for arm, sets in ARMS.items():
                if any(r["arm"] == arm and r["budget"] == budget and r.get("seed", 0) == seed for r in rows):
                    continue
                report.say(f"== budget {budget:,}: {arm}, seed {seed}")
                recipe = load_recipe(args.recipe, args.overrides + sets + [f"adapters.ranks.budget={budget}",
                                                                            f"train.seed={seed}"])
                run_dir = args.out / f"{budget}-{arm.replace(' ', '_').replace('/', '-')}-seed{seed}"
                try:
                    result = finetune(recipe, run_dir, True, report)
                except RecipeError as exc:  # an allocation this budget cannot meet: say so, run the rest
                    report.warn(f"{arm} at budget {budget:,}: {exc}")
                    continue
                rows.append(row(arm, budget, seed, result, json.loads((run_dir / "ranks.json").read_text())))
                done_file.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
