"""`vqtool ablate`: grid parsing, cell recipes, PEFT placement regexes, and a resumable tiny sweep."""

from __future__ import annotations

import csv

import pytest

from conftest import SHIPPED_RECIPE, data_overrides
from toolchain.errors import VqtoolError


def test_parse_grid_values_and_errors():
    from toolchain.bench.ablate import parse_grid

    assert parse_grid(["quant=nf4,none", "rank=4,8"]) == {"quant": ["nf4", "none"], "rank": [4, 8]}
    with pytest.raises(VqtoolError, match="unknown axis 'bits'.*quant.*rank.*placement.*frames"):
        parse_grid(["bits=4"])
    with pytest.raises(VqtoolError, match="'nf5' is not allowed; choose from nf4, fp4, int8, none"):
        parse_grid(["quant=nf5"])
    with pytest.raises(VqtoolError, match="placement.*qv, all-linear, vision, text"):
        parse_grid(["placement=mlp"])
    with pytest.raises(VqtoolError, match="rank takes positive integers"):
        parse_grid(["rank=0"])
    with pytest.raises(VqtoolError, match="given twice"):
        parse_grid(["rank=4", "rank=8"])


def test_cell_recipe_overrides():
    from toolchain.bench.ablate import cell_recipe, cell_row_key
    from toolchain.recipe import load_recipe

    base = load_recipe(SHIPPED_RECIPE)
    r = cell_recipe(base, {"quant": "none", "rank": 16, "placement": "text", "frames": 2}, steps=5)
    assert r.adapters.quantization == "none" and r.adapters.rank == 16
    assert r.adapters.alpha / r.adapters.rank == base.adapters.alpha / base.adapters.rank
    assert r.adapters.temporal.enabled is False  # temporal adapters need vision LoRA layers
    assert r.frames.k == 2 and r.train.max_steps == 5
    key = cell_row_key(r, 5)
    assert (key["quant"], key["rank"], key["placement"], key["frames"]) == ("none", 16, "text", 2)
    assert cell_row_key(cell_recipe(base, {"rank": 16}, 5), 5)["recipe_sha"] != key["recipe_sha"]


@pytest.mark.parametrize("placement,tower", [("vision", "vision_model"), ("text", "text_model")])
def test_tower_placements_wrap_only_that_tower(placement, tower):
    from peft.tuners.lora import LoraLayer
    from torch import nn

    from toolchain.adapters.qlora import add_lora
    from toolchain.bench.ablate import PLACEMENTS
    from toolchain.models.build import base_info, load_clip
    from toolchain.recipe import AdaptersSection

    clip = load_clip(base_info("tiny-video-clip").path)
    in_tower = [n for n, m in clip.named_modules() if isinstance(m, nn.Linear) and n.startswith(tower)]
    proj = "visual_projection" if tower == "vision_model" else "text_projection"
    model = add_lora(clip, AdaptersSection(quantization="none", target_modules=PLACEMENTS[placement]))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == len(in_tower) + 1
    assert all(tower in n or n.endswith(proj) for n in wrapped)


def test_results_csv_header_mismatch_is_a_clear_error(tmp_path):
    from toolchain.bench.ablate import append_row, read_rows

    path = tmp_path / "results.csv"
    append_row(path, {"quant": "nf4", "rank": 8})
    assert read_rows(path)[0]["quant"] == "nf4"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(VqtoolError, match="choose another --out"):
        read_rows(path)


def test_ablate_cli_rejects_unknown_axis_before_work(run_cli):
    proc = run_cli("ablate", SHIPPED_RECIPE, "--grid", "bits=4,8")
    assert proc.returncode == 2 and "unknown axis 'bits'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ablate_tiny_grid_writes_files_and_resumes(run_cli, shapes_data, tmp_path):
    sets = []
    for item in [*data_overrides(shapes_data), "train.batch_size=4", "frames.k=2", "train.warmup_steps=0"]:
        sets += ["--set", item]
    out = tmp_path / "ablation"
    args = ("ablate", SHIPPED_RECIPE, "--grid", "quant=nf4,none", "--steps", "2", "--out", out, *sets)
    first = run_cli(*args, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["quant"] for r in rows] == ["nf4", "none"]
    for r in rows:
        assert r["steps"] == "2" and r["frames"] == "2" and r["placement"] == "all-linear"
        assert 0 <= float(r["t2v_r1"]) <= 100 and 0 <= float(r["v2t_r1"]) <= 100
        assert 0 < float(r["train_peak_mb"]) <= float(r["process_peak_mb"]) and float(r["step_s"]) > 0
        assert int(r["trainable_params"]) > 0
    table = (out / "results.md").read_text()
    assert "| nf4 | 8 | all-linear | 2 |" in table and "| none | 8 | all-linear | 2 |" in table
    for name in ("accuracy_vs_memory.png", "accuracy_vs_rank.png", "accuracy_vs_frames.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "results.csv").read_text()
    second = run_cli(*args, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 cell(s) run, 2 of 2 in results.csv" in second.stderr
    assert (out / "results.csv").read_text() == before


def test_ablate_cli_reads_axes_after_grid(run_cli):
    """`--grid quant=nf4 rank=0`: the second item (a positional argument to click) is an axis too."""
    proc = run_cli("ablate", SHIPPED_RECIPE, "--grid", "quant=nf4", "rank=0")
    assert proc.returncode == 2 and "--grid rank=0" in proc.stderr and "Traceback" not in proc.stderr
