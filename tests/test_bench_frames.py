"""`vqtool bench frames` on the tiny model: one accuracy cell per selector and the latency split."""

from __future__ import annotations

import json

import pytest

from conftest import SHIPPED_RECIPE, data_overrides


@pytest.mark.slow
def test_bench_frames_writes_tables_and_json(run_cli, shapes_data, tmp_path):
    sets = []
    for item in [*data_overrides(shapes_data), "train.batch_size=4", "export.threads=1"]:
        sets += ["--set", item]
    out = tmp_path / "bench"
    proc = run_cli("bench", "frames", SHIPPED_RECIPE, "--ks", "2,4", "--selectors", "uniform,motion",
                   "--steps", "2", "--arch", "tiny", "--runs", "2", "--threads", "1", "--clip", "9x30x40",
                   "--out", out, "--json", *sets, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cells = {(r["selector"], r["k"]) for r in result["accuracy"]}
    assert cells == {("uniform", 2), ("uniform", 4), ("motion", 2), ("motion", 4)}
    assert all(0 <= r["t2v_r1"] <= 100 and 0 <= r["direction_r1"] <= 100 for r in result["accuracy"])
    lat = result["latency"]
    assert [r["k"] for r in lat] == [2, 4]
    assert all(0 < r["selection_preprocess_p50_ms"] and 0 < r["selection_share"] for r in lat)
    table = (out / "frames.md").read_text()
    assert "K=2 t2v R@1" in table and "selection + preprocessing" in table
    assert json.loads((out / "frames.json").read_text())["accuracy"] == result["accuracy"]


def test_bench_frames_rejects_unknown_arch(run_cli):
    proc = run_cli("bench", "frames", SHIPPED_RECIPE, "--no-accuracy", "--arch", "vit-huge", "--ks", "2")
    assert proc.returncode == 2 and "clip-vit-b32" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_frames_over_seeds_reports_spread_and_verdicts(run_cli, shapes_data, tmp_path):
    sets = []
    for item in [*data_overrides(shapes_data), "train.batch_size=4"]:
        sets += ["--set", item]
    out = tmp_path / "bench"
    proc = run_cli("bench", "frames", SHIPPED_RECIPE, "--ks", "4", "--selectors", "uniform,motion", "--seeds", "0,1",
                   "--steps", "2", "--no-latency", "--out", out, "--json", *sets, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"]
    assert sorted((r["cell"], r["seed"]) for r in acc) == [("motion K=4", 0), ("motion K=4", 1),
                                                           ("uniform K=4", 0), ("uniform K=4", 1)]
    table = (out / "frames.md").read_text()
    assert "| uniform K=4 | 0,1 |" in table and "- motion K=4 vs uniform K=4:" in table


def test_bench_frames_rejects_bad_seeds_before_training(run_cli):
    proc = run_cli("bench", "frames", SHIPPED_RECIPE, "--no-latency", "--seeds", "0,x")
    assert proc.returncode == 2 and "--seeds takes whole numbers" in proc.stderr and "Traceback" not in proc.stderr
