"""Ablations over seeds (toolchain/bench/seeds.py): mean and spread per arm, and the spread verdicts."""

from __future__ import annotations

import pytest

from toolchain.bench.seeds import cell, parse_seeds, spread_markdown, summarise, verdicts


def rows(arm: str, values: list[float]) -> list[dict]:
    return [{"arm": arm, "seed": s, "r1": v} for s, v in enumerate(values)]


def test_parse_seeds_reads_a_comma_list_and_names_the_fix():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3") == [3]
    for bad in ("a,b", "", "1,1"):
        with pytest.raises(ValueError, match="e.g. 0,1,2"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="--sizes takes whole numbers"):
        parse_seeds("192,x", "--sizes")


def test_summarise_gives_mean_min_max_per_arm_in_first_seen_order():
    summary = summarise(rows("b", [90.0, 100.0, 95.0]) + rows("a", [50.0]), "arm", ["r1"])
    assert [s["arm"] for s in summary] == ["b", "a"]
    b = summary[0]
    assert b["seeds"] == [0, 1, 2]
    assert (b["r1"]["mean"], b["r1"]["min"], b["r1"]["max"]) == (95.0, 90.0, 100.0)
    assert cell(b["r1"]) == "95.0 (90.0–100.0)"
    assert cell(summary[1]["r1"]) == "50.0"  # one seed: no range to show


def test_a_metric_no_row_has_is_a_dash_not_a_zero():
    summary = summarise([{"arm": "a", "seed": 0, "r1": None}], "arm", ["r1"])
    assert summary[0]["r1"] is None and cell(None) == "–"


def test_verdicts_call_apart_ranges_beyond_the_spread_and_overlapping_ones_within():
    summary = summarise(rows("ref", [95.0, 100.0, 97.0]) + rows("far", [40.0, 60.0, 50.0])
                        + rows("near", [93.0, 96.0, 99.0]) + rows("once", [10.0]), "arm", ["r1"])
    lines = verdicts(summary, "ref", "r1")
    assert lines[0].startswith("- far vs ref: -47.3 points") and "exceeds the seed spread" in lines[0]
    assert lines[1].startswith("- near vs ref: -1.3 points") and "within the seed spread" in lines[1]
    assert "one seed" in lines[2]
    with pytest.raises(ValueError, match="reference arm 'gone'"):
        verdicts(summary, "gone", "r1")


def test_spread_markdown_puts_fixed_columns_between_the_seeds_and_the_metrics():
    summary = summarise(rows("a", [1.0, 3.0]), "arm", ["r1"])
    table = spread_markdown(summary, {"r1": "R@1"}, {"params": {"a": "1,024"}}).splitlines()
    assert table[0] == "| arm | seeds | params | R@1 |"
    assert table[1] == "|---|---|---:|---:|"
    assert table[2] == "| a | 0,1 | 1,024 | 2.0 (1.0–3.0) |"
