"""Score a retrieval run's base and fine-tuned model on clips of the independent check renderer.

The check renderer (tests/check_renderer.py) draws the shapes caption grammar with its own code,
colours, sizes, noise and codecs; it never trains anything. Per check seed it renders 48 clips (one
per caption) and evaluates the run's base (no adapters) and its fine-tuned model (as trained) with
the run's own recipe, frames and selector:
  colour + shape: the top caption among all 48 has the clip's colour and shape (chance 1/12);
  reversed: the clip's caption outscores the same caption with the direction reversed (chance 50);
  direction R@1: each caption finds its clip among the 4 of its colour and shape (chance 25).
Run: python scripts/score_check_renderer.py RUN_DIR [--seeds 0 1 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from check_renderer import render_check_set  # noqa: E402  (tests/, not the package: it only scores)

from toolchain.data.formats import read_split  # noqa: E402
from toolchain.data.splits import frame_cache, load_split  # noqa: E402
from toolchain.models.assemble import build_trainable, load_as_trained, model_info  # noqa: E402
from toolchain.progress import Reporter  # noqa: E402
from toolchain.recipe import load_recipe  # noqa: E402
from toolchain.tasks import TASKS  # noqa: E402

KEYS = {"colour_shape": "v2t_group_r1", "reversed": "reversed_caption_acc", "direction_r1": "t2v_within_group_r1"}


def scores(metrics: dict) -> dict:
    return {name: metrics[key] for name, key in KEYS.items()}


def score_run(run_dir: Path, seeds: list[int], work: Path) -> list[dict]:
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.task != "retrieval":
        raise SystemExit(f"{run_dir} is a {recipe.task} run; this script scores retrieval runs")
    report, info, task = Reporter(quiet=True), model_info(recipe), TASKS["retrieval"]
    models = {"base": build_trainable(recipe, info, "cpu").eval(), "finetuned": load_as_trained(run_dir, recipe, info)}
    rows = []
    for seed in seeds:
        check = load_recipe(run_dir / "recipe.yaml", [f"data.eval={render_check_set(work / f'check{seed}', seed)}",
                                                    "data.cache=false"])
        split = read_split(check.data, "eval", "retrieval")
        # one decode for both models: their frame preparation comes from the same recipe
        clips = load_split(check, "eval", split, models["finetuned"].preparer(), frame_cache(check), report)
        data = task.prepare(check, info, models["finetuned"], clips, "cpu")
        rows.append({"seed": seed, **{name: scores(task.evaluate(model, data, check)) for name, model in models.items()}})
    return rows


def table_line(label, row: dict) -> str:
    return f"{label:<11}" + "".join(f"{row[m][k]:>24.1f}" for m in ("base", "finetuned") for k in KEYS)


def table(rows: list[dict]) -> str:
    lines = [f"{'check seed':<11}" + "".join(f"{m + ' ' + k:>24}" for m in ("base", "finetuned") for k in KEYS)]
    lines += [table_line(row["seed"], row) for row in rows]
    if len(rows) > 1:
        lines.append(table_line("mean", {m: {k: statistics.mean(r[m][k] for r in rows) for k in KEYS}
                                         for m in ("base", "finetuned")}))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqtool-check-") as tmp:
        rows = score_run(args.run_dir, args.seeds, Path(tmp))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
