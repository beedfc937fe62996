"""Every recipe that ships validates, and starts with a comment giving its exact command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolchain.recipe import load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml")) + sorted(RECIPES_DIR.glob("*.yml"))


def test_some_recipes_ship():
    assert RECIPES, f"no recipes in {RECIPES_DIR}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name, "a shipped recipe should name its run"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_first_line_is_the_exact_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# vqtool "), f"{path.name}: first line should be '# vqtool ...', got {first!r}"
    rel = f"recipes/{path.name}"
    assert f"vqtool finetune {rel}" in first, f"{path.name}: the command should be `vqtool finetune {rel}`"
    # If the comment goes on to the export, it must point at the run dir this recipe writes.
    recipe = load_recipe(path)
    for run_dir in re.findall(r"vqtool export (\S+)", first):
        assert run_dir == f"runs/{recipe.name}", f"{path.name}: exports {run_dir}, but the run is runs/{recipe.name}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_header_says_where_the_data_goes(path):
    """Every data path a recipe reads is named in its header comment, so a user knows where to put it."""
    recipe = load_recipe(path)
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    d = recipe.data
    paths = [d.annotations, d.video_root] if d.format in ("msrvtt", "vatex") else []
    paths += [p for p in (d.train, d.eval) if "/" in p]  # an MSR-VTT split name is not a path
    if d.format == "jsonl" and d.synthesize_if_missing:
        paths = [str(Path(d.train).parent)]  # the synthetic set: the header names its folder
    for p in filter(None, paths):
        assert p in header, f"{path.name}: the header comment should say where {p} comes from"
