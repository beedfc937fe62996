"""A failed parity gate: `vqtool export` exits 1, names the failure, and keeps the files."""

from __future__ import annotations

import json
import shutil

import yaml


def test_failed_gate_exits_1_and_keeps_the_export(run_cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["export"]["variants"] = ["fp32", "int8"]
    recipe["export"]["parity"] = {"int8": {"min_cosine": 1.0}}  # int8 cannot be exact
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "export"
    proc = run_cli("export", run, "--output-dir", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "parity gate failed" in proc.stderr and "Traceback" not in proc.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False and parity["variants"]["fp32"]["passed"] is True
    failures = parity["variants"]["int8"]["failures"]
    assert any("video_embeds min cosine" in f for f in failures)
    assert "FAIL" in (out / "parity.md").read_text() and (out / "video_encoder.int8.onnx").is_file()
