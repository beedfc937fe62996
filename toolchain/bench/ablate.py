"""`vqtool ablate`: short fine-tunes over a grid of bit width, rank, adapter placement and frame budget.

Each cell is the recipe with its axes overridden, fine-tuned in a fresh process (so its peak memory
is its own) and appended to DIR/results.csv as soon as it finishes; a cell already in the csv (same
axes, steps and resolved recipe) is not run again, so an interrupted sweep resumes where it stopped.
Run as `python -m toolchain.bench.ablate RECIPE.yaml RUN_DIR` it fine-tunes one cell and prints JSON.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import VqtoolError
from toolchain.progress import Reporter
from toolchain.bench.plots import PLOTS, write_plots
from toolchain.recipe import Recipe, dump_recipe, validate_recipe

QUANTS = ("nf4", "fp4", "int8", "none")
LINEARS = r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
# PEFT matches a string target with re.fullmatch against full module names (vision_model.encoder...).
PLACEMENTS = {
    "qv": ["q_proj", "v_proj"],
    "all-linear": "all-linear",
    "vision": rf"(.*\.)?(vision_model\..*\.{LINEARS}|visual_projection)",
    "text": rf"(.*\.)?(text_model\..*\.{LINEARS}|text_projection)",
}
AXES = {"quant": "nf4, fp4, int8, none", "rank": "positive integers", "placement": ", ".join(PLACEMENTS),
        "frames": "positive integers (K)"}
COLUMNS = ["quant", "rank", "placement", "frames", "steps", "t2v_r1", "v2t_r1", "direction_r1", "train_peak_mb",
           "process_peak_mb", "step_s", "trainable_params", "total_params", "train_seconds", "device", "recipe_sha"]
KEY = ("quant", "rank", "placement", "frames", "steps", "recipe_sha")
TRAIN_PHASE = "fine-tuning"  # the Reporter task train.train_loop opens around the training steps


def parse_value(axis: str, text: str):
    if axis in ("rank", "frames"):
        if not text.isdigit() or int(text) < 1:
            raise VqtoolError(f"--grid {axis}={text}: {text!r} is not allowed; {axis} takes {AXES[axis]}")
        return int(text)
    allowed = QUANTS if axis == "quant" else tuple(PLACEMENTS)
    if text not in allowed:
        raise VqtoolError(f"--grid {axis}={text}: {text!r} is not allowed; choose from {', '.join(allowed)}")
    return text


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["quant=nf4,none", "rank=4,8"]` -> {"quant": ["nf4", "none"], "rank": [4, 8]}, checked."""
    if not items:
        raise VqtoolError("--grid: give at least one axis, e.g. --grid quant=nf4,none rank=4,8 "
                          f"(axes: {', '.join(AXES)})")
    grid: dict[str, list] = {}
    for item in items:
        axis, sep, values = item.partition("=")
        if not sep or axis not in AXES:
            raise VqtoolError(f"--grid {item!r}: unknown axis {axis!r}; write AXIS=V1,V2 with AXIS one of "
                              + "; ".join(f"{a} ({v})" for a, v in AXES.items()))
        if axis in grid:
            raise VqtoolError(f"--grid: axis {axis!r} is given twice; list all its values once ({axis}=A,B)")
        parsed = [parse_value(axis, v.strip()) for v in values.split(",") if v.strip()]
        if not parsed:
            raise VqtoolError(f"--grid {item!r}: no values; e.g. {axis}={AXES[axis].split(',')[0]}")
        grid[axis] = list(dict.fromkeys(parsed))
    return grid


def grid_cells(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def placement_of(recipe: Recipe) -> str:
    """Name of the recipe's own placement, or its target_modules as written when it is none of ours."""
    for name, target in PLACEMENTS.items():
        if recipe.adapters.target_modules == target:
            return name
    tm = recipe.adapters.target_modules
    return ",".join(tm) if isinstance(tm, list) else tm


def cell_recipe(base: Recipe, cell: dict, steps: int) -> Recipe:
    """The recipe for one cell. Alpha keeps the recipe's alpha/rank ratio; text-only placement turns the
    temporal adapters (which live on vision LoRA layers) off."""
    raw = base.model_dump(mode="json")
    a = raw["adapters"]
    if "quant" in cell:
        a["quantization"] = cell["quant"]
    if "rank" in cell:
        a["alpha"], a["rank"] = base.adapters.alpha * cell["rank"] / base.adapters.rank, cell["rank"]
    if "placement" in cell:
        a["target_modules"] = PLACEMENTS[cell["placement"]]
        if cell["placement"] == "text":
            a["temporal"]["enabled"] = False
    if "frames" in cell:
        raw["frames"]["k"] = cell["frames"]
        raw["frames"]["decode_max_frames"] = max(cell["frames"], raw["frames"]["decode_max_frames"])
    raw["train"]["max_steps"], raw["train"]["epochs"] = steps, None
    return validate_recipe(raw, source=f"ablation cell {cell}")


def cell_row_key(recipe: Recipe, steps: int) -> dict:
    """The columns that identify a cell: its axes as resolved, steps, and a hash of the whole recipe."""
    sha = hashlib.sha256(dump_recipe(recipe).encode()).hexdigest()[:12]
    return {"quant": recipe.adapters.quantization, "rank": recipe.adapters.rank, "placement": placement_of(recipe),
            "frames": recipe.frames.k, "steps": steps, "recipe_sha": sha}


def key_of(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise VqtoolError(f"{path} has columns {reader.fieldnames}, not this version's {COLUMNS}; "
                              "move it away or choose another --out")
        return list(reader)


def append_row(path: Path, row: dict) -> None:
    """Rewrite the csv with the new row through a temp file and rename: a crash never leaves half a row."""
    from toolchain.rundir import write_text

    old = path.read_text() if path.is_file() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow({c: row.get(c) for c in COLUMNS})
    write_text(path, old + buf.getvalue())


class PhasePeakReporter(Reporter):
    """Quiet reporter that also takes the peak memory of the training phase (model load and eval excluded)."""

    def __init__(self, device: str):
        super().__init__(quiet=True)
        self.device, self.train_peak, self.load_peak = device, None, None

    @contextmanager
    def task(self, description: str, total):
        from toolchain.bench.peak import peak_mb, reset_peak

        if description != TRAIN_PHASE:
            with super().task(description, total) as t:
                yield t
            return
        self.load_peak = peak_mb(self.device)
        reset_peak(self.device)
        with super().task(description, total) as t:
            yield t
        self.train_peak = peak_mb(self.device)


def run_cell(recipe_file: str, run_dir: str) -> dict:
    """One fine-tune in this process; the result row (without the key columns)."""
    from toolchain.bench.peak import peak_mb
    from toolchain.recipe import load_recipe
    from toolchain.train import finetune, pick_device

    device = pick_device()
    report = PhasePeakReporter(device)
    result = finetune(load_recipe(recipe_file), Path(run_dir), True, report)
    if report.train_peak is None:
        raise VqtoolError(f"ablate: the training loop never opened its {TRAIN_PHASE!r} progress task; "
                          "the peak-memory hook in toolchain/bench/ablate.py needs updating")
    ft = result["finetuned"]
    return {
        "t2v_r1": ft["t2v"]["r1"], "v2t_r1": ft["v2t"]["r1"], "direction_r1": ft.get("t2v_within_group_r1"),
        "train_peak_mb": round(report.train_peak, 1),
        "process_peak_mb": round(max(report.load_peak, peak_mb(device)), 1),
        "step_s": round(result["train_seconds"] / result["steps"], 4), "train_seconds": result["train_seconds"],
        "trainable_params": result["trainable_params"], "total_params": result["total_params"], "device": device,
    }


def spawn_cell(recipe: Recipe, tmp: Path) -> dict:
    recipe_file = tmp / "recipe.yaml"
    recipe_file.write_text(dump_recipe(recipe))
    cmd = [sys.executable, "-m", "toolchain.bench.ablate", str(recipe_file), str(tmp / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise VqtoolError(tail[0])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def label(cell: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.items())


def run_ablation(base: Recipe, grid: dict[str, list], steps: int, out: Path, report: Reporter,
                 run: bool = True) -> dict:
    """Run every unfinished cell (unless run=False), appending each to out/results.csv; then write the
    table and plots of the grid's cells found in the csv."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    done = {key_of(r) for r in read_rows(csv_path)}
    cells = [(cell, cell_recipe(base, cell, steps)) for cell in grid_cells(grid)]
    keys, failed, ran = [], [], 0
    with report.task("ablation grid", len(cells)) as advance:
        for cell, recipe in cells:
            key = cell_row_key(recipe, steps)
            keys.append(key_of(key))
            if key_of(key) in done or not run:
                advance(1, f"{label(cell)}: {'already in results.csv' if key_of(key) in done else 'not run'}")
                continue
            advance(0, f"{label(cell)}: fine-tuning")
            try:
                with tempfile.TemporaryDirectory(prefix="vqtool-ablate-") as tmp:
                    row = {**key, **spawn_cell(recipe, Path(tmp))}
            except VqtoolError as exc:
                failed.append(f"{label(cell)}: {exc}")
                advance(1, f"{label(cell)}: failed")
                continue
            append_row(csv_path, row)
            done.add(key_of(row))
            ran += 1
            advance(1, f"{label(cell)}: t2v R@1 {row['t2v_r1']:.1f}")
    rows = write_report(csv_path, keys, grid, steps, base.name)
    return {"cells": len(cells), "ran": ran, "done": len(rows), "failed": failed, "rows": rows,
            "plots": [str(out / name) for name in PLOTS] if rows else [], "csv": str(csv_path)}


def write_report(csv_path: Path, keys: list[tuple], grid: dict, steps: int, name: str) -> list[dict]:
    """results.md and the PNG plots for the grid's cells that are in the csv, in grid order."""
    from toolchain.bench.tables import results_markdown

    order = {k: i for i, k in enumerate(keys)}
    rows = sorted((r for r in read_rows(csv_path) if key_of(r) in order), key=lambda r: order[key_of(r)])
    (csv_path.parent / "results.md").write_text(results_markdown(rows, grid, steps, name))
    write_plots(rows, list(grid), csv_path.parent)
    return rows


def cell_main(argv: list[str]) -> None:
    from toolchain.quiet import quiet_libraries

    quiet_libraries()
    if len(argv) != 2:
        sys.exit("usage: python -m toolchain.bench.ablate RECIPE.yaml RUN_DIR")
    try:
        print(json.dumps(run_cell(*argv)), flush=True)
    except VqtoolError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cell_main(sys.argv[1:])
