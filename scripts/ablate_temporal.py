"""Ablation: plain LoRA vs temporal LoRA (each gate mode) on the synthetic shapes, same recipe otherwise.

Run: python scripts/ablate_temporal.py [--recipe recipes/shapes-tiny.yaml] [--out runs/ablate-temporal]
     [--seeds 0,1,2] [--set KEY=VALUE ...]
Each arm is a real `finetune` of the recipe, once per seed; the table (markdown: mean and min-max over
the seeds, then which arms differ from the shipped `gate=motion` by more than the seed spread) and the
rows (JSON) go to --out. Finished runs are not run again. Plain LoRA runs at the recipe's rank and one
rank higher, so it gets at least the temporal arms' trainable-parameter budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.bench.seeds import parse_seeds, spread_markdown, summarise, verdicts
from toolchain.progress import Reporter
from toolchain.quiet import quiet_libraries
from toolchain.recipe import load_recipe
from toolchain.train import finetune

METRICS = {"t2v_r1": "t2v R@1", "v2t_r1": "v2t R@1", "direction_r1": "direction R@1 (chance 25)",
           "train_seconds": "train s"}
REFERENCE = "temporal gate=motion"  # the shipped recipe's adapter


def arms(rank: int) -> dict[str, list[str]]:
    plain = ["adapters.temporal.enabled=false"]
    temporal = ["adapters.temporal.enabled=true"]
    out = {f"plain r={rank}": plain, f"plain r={rank + 1}": plain + [f"adapters.rank={rank + 1}",
                                                                     f"adapters.alpha={2 * (rank + 1)}"]}
    for gate in ("none", "motion", "position", "both"):
        out[f"temporal gate={gate}"] = temporal + [f"adapters.temporal.gate={gate}"]
    return out


def row(name: str, seed: int, result: dict) -> dict:
    ft, base = result["finetuned"], result["base"]
    return {"arm": name, "seed": seed, "trainable_params": result["trainable_params"],
            "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"], "direction_r1": ft["t2v_within_group_r1"],
            "base_t2v_r1": base["t2v"]["r1"], "base_direction_r1": base["t2v_within_group_r1"],
            "train_seconds": result["train_seconds"]}


def markdown(rows: list[dict]) -> str:
    summary = summarise(rows, "arm", list(METRICS))
    params = {r["arm"]: f"{r['trainable_params']:,}" for r in rows}
    table = spread_markdown(summary, METRICS, {"trainable params": params}).splitlines()
    base = rows[0]
    table.append(f"| base (no fine-tuning) | – | 0 | {base['base_t2v_r1']:.1f} | – | {base['base_direction_r1']:.1f} | – |")
    lines = table + [""]
    if any(s["arm"] == REFERENCE for s in summary):
        for metric in ("direction_r1", "t2v_r1"):
            lines += verdicts(summary, REFERENCE, metric)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate-temporal"))
    ap.add_argument("--seeds", default=None, help="training seeds, comma list, e.g. 0,1,2 (default: the recipe's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    quiet_libraries()
    recipe = load_recipe(args.recipe, args.overrides)
    seeds = parse_seeds(args.seeds) if args.seeds else [recipe.train.seed]
    report = Reporter()
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "results.json"
    rows = json.loads(done_file.read_text()) if done_file.is_file() else []
    for seed in seeds:
        for name, sets in arms(recipe.adapters.rank).items():
            if any(r["arm"] == name and r.get("seed") == seed for r in rows):
                continue
            report.say(f"== {name}, seed {seed}")
            arm_recipe = load_recipe(args.recipe, args.overrides + sets + [f"train.seed={seed}"])
            run_dir = args.out / f"{name.replace(' ', '_').replace('=', '-')}-seed{seed}"
            rows.append(row(name, seed, finetune(arm_recipe, run_dir, True, report)))
            done_file.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
