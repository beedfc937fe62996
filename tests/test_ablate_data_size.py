"""scripts/ablate_data_size.py: where each size's clips live, and reusing only matching finished runs."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from conftest import REPO, SHIPPED_RECIPE
from toolchain.errors import RecipeError
from toolchain.progress import Reporter
from toolchain.recipe import dump_recipe, load_recipe
from toolchain.train import resolved

sys.path.insert(0, str(REPO / "scripts"))

from ablate_data_size import markdown, run_cell, size_overrides  # noqa: E402


def own_data(tmp_path) -> list[str]:
    own = tmp_path / "data" / "shapes"
    own.mkdir(parents=True)
    (own / "train.jsonl").write_text("")  # present: the recipe's own size is not rendered again
    return [f"data.train={own / 'train.jsonl'}", f"data.eval={own / 'eval.jsonl'}"]


def test_the_recipes_own_size_uses_its_data_and_another_size_is_rendered_beside_it(tmp_path):
    recipe = load_recipe(SHIPPED_RECIPE, own_data(tmp_path))
    own = size_overrides(recipe, recipe.data.synth_videos)
    assert own[0] == f"data.train={tmp_path / 'data' / 'shapes' / 'train.jsonl'}"
    other = size_overrides(recipe, 6)
    sib = tmp_path / "data" / "shapes6"
    assert other == [f"data.train={sib / 'train.jsonl'}", f"data.eval={sib / 'eval.jsonl'}", "data.synth_videos=6"]
    rows = (sib / "train.jsonl").read_text().splitlines()
    assert len(rows) == 6 and len((sib / "eval.jsonl").read_text().splitlines()) == 48


def test_a_finished_run_is_reused_only_when_its_recipe_matches(tmp_path, monkeypatch):
    own_data(tmp_path)
    (tmp_path / "data" / "shapes" / "eval.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)  # relative data paths, as a user gives them; the run saved them absolute
    sets = ["data.train=data/shapes/train.jsonl", "data.eval=data/shapes/eval.jsonl"]
    args = argparse.Namespace(recipe=str(SHIPPED_RECIPE), overrides=sets, out=tmp_path / "out")
    base = load_recipe(SHIPPED_RECIPE, sets)
    recipe = load_recipe(SHIPPED_RECIPE, sets + size_overrides(base, base.data.synth_videos) + ["train.seed=1"])
    run = args.out / f"n{base.data.synth_videos}-seed1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(dump_recipe(resolved(recipe)))  # what finetune saves
    (run / "eval.json").write_text(json.dumps({"marker": 7}))
    assert run_cell(args, base.data.synth_videos, 1, Reporter(quiet=True)) == {"marker": 7}

    args.overrides = sets + ["train.lr=0.5"]
    with pytest.raises(RecipeError, match="train.lr differ"):
        run_cell(args, base.data.synth_videos, 1, Reporter(quiet=True))


def test_the_table_gives_each_size_its_spread_and_the_lowest_run():
    rows = [{"clips": c, "seed": s, "t2v_r1": v, "direction_r1": v, "reversed_caption_acc": 100.0,
             "train_seconds": 170.0, "base_direction_r1": 25.0}
            for s, (a, b) in enumerate([(100.0, 97.9), (95.8, 100.0)]) for c, v in (("192", a), ("960", b))]
    table = markdown(rows)
    assert "| training clips | seeds |" in table
    assert "| 192 | 0,1 | 97.9 (95.8–100.0) |" in table
    assert "Lowest direction R@1 of any run: 95.8 (base before fine-tuning: 25.0" in table
