"""Data size: the shipped recipe on 192 / 960 / 1,920 training clips, several seeds (issue 15).

Run: python scripts/ablate_data_size.py [--recipe recipes/shapes-tiny.yaml] [--sizes 192,960,1920]
     [--seeds 0,1,2] [--out runs/ablate-data-size] [--set KEY=VALUE ...]
The recipe's own data dir serves its `data.synth_videos` size; every other size N is rendered once,
on first use, into a sibling dir named shapesN (e.g. data/shapes960/) by the recipe's synthesizer and
synth seed, so every size has the same 48 eval clips. Each cell is a real `finetune` with only the
data and the seed changed; the table (markdown: mean and min-max over the seeds) and the rows (JSON)
go to --out. A finished run dir is reused, not run again, if its recipe matches; one that does not
match is an error (delete it or pick another --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.bench.seeds import parse_seeds, spread_markdown, summarise
from toolchain.checkpoint import recipe_differences
from toolchain.data.synth import synthesize
from toolchain.errors import RecipeError
from toolchain.progress import Reporter
from toolchain.quiet import quiet_libraries
from toolchain.recipe import load_recipe
from toolchain.train import finetune, resolved

METRICS = {"t2v_r1": "t2v R@1", "direction_r1": "direction R@1", "reversed_caption_acc": "reversed caption %",
           "train_seconds": "train s"}


def size_overrides(recipe, size: int) -> list[str]:
    """Point the recipe at a data dir holding `size` training clips (rendered there if missing)."""
    own = Path(recipe.data.train).parent
    data = own if size == recipe.data.synth_videos else own.parent / f"shapes{size}"
    if not (data / "train.jsonl").is_file():
        synthesize(data, size, recipe.data.synth_seed, variety=recipe.data.synth_variety)
    return [f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'eval.jsonl'}", f"data.synth_videos={size}"]


def run_cell(args, size: int, seed: int, report: Reporter) -> dict:
    base = load_recipe(args.recipe, args.overrides)
    recipe = load_recipe(args.recipe, args.overrides + size_overrides(base, size) + [f"train.seed={seed}"])
    run_dir = args.out / f"n{size}-seed{seed}"
    if (run_dir / "eval.json").is_file():
        diff = recipe_differences(load_recipe(run_dir / "recipe.yaml"), resolved(recipe))  # saved as run: absolute paths
        if diff:
            raise RecipeError(f"{run_dir} was trained with another recipe ({', '.join(diff)} differ); "
                              "delete it or pick another --out")
        report.say(f"== {size} clips, seed {seed}: finished run reused")
        return json.loads((run_dir / "eval.json").read_text())
    report.say(f"== {size} clips, seed {seed}")
    return finetune(recipe, run_dir, False, report)


def row(size: int, seed: int, result: dict) -> dict:
    ft = result["finetuned"]
    return {"clips": f"{size:,}", "seed": seed, "t2v_r1": ft["t2v"]["r1"], "direction_r1": ft["t2v_within_group_r1"],
            "reversed_caption_acc": ft.get("reversed_caption_acc"), "train_seconds": result["train_seconds"],
            "base_direction_r1": result["base"]["t2v_within_group_r1"]}


def markdown(rows: list[dict]) -> str:
    table = spread_markdown(summarise(rows, "clips", list(METRICS)), METRICS).replace("| arm |", "| training clips |", 1)
    worst = min(r["direction_r1"] for r in rows)
    base = max(r["base_direction_r1"] for r in rows)
    return table + (f"\nLowest direction R@1 of any run: {worst:.1f} (base before fine-tuning: {base:.1f}; "
                    "chance 25).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--sizes", default="192,960,1920", help="training clips per cell, comma list")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma list")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate-data-size"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    quiet_libraries()
    report = Reporter()
    sizes = parse_seeds(args.sizes, "--sizes")
    rows = [row(size, seed, run_cell(args, size, seed, report)) for seed in parse_seeds(args.seeds) for size in sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
