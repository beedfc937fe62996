"""`make demo`, the README's first command, run for real with a shorter fine-tune: every command of
the target (finetune, export with its parity gate, infer) runs, in a scratch dir."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, THREADS, cli_env

SHORT = ["train.max_steps=6", "train.batch_size=8", "data.synth_videos=12", "frames.k=4",
         "export.latency_runs=3", f"export.threads={THREADS}"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make (CI runs `make test`)")
def test_make_demo_runs_every_command(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "shapes-tiny.yaml", tmp_path / "recipes")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "vqtool").is_file(), "the vqtool console script of this environment"
    # -o: the venv is this one, already set up (make would otherwise reinstall it here)
    cmd = ["make", "-o", f"{bin_dir}/vqtool", f"BIN={bin_dir}", "demo",
           "DEMO_SET=" + " ".join(f"--set {s}" for s in SHORT)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    commands = [line for line in proc.stdout.splitlines() if line.startswith(str(bin_dir))]
    assert [c.split()[1] for c in commands] == ["finetune", "export", "infer"], commands
    assert "--set train.max_steps=6" in commands[0]
    assert "Parity report: PASSED" in proc.stdout and "cosine similarity" in proc.stdout
    assert (tmp_path / "runs" / "shapes-tiny" / "eval.json").is_file()
    assert (tmp_path / "exports" / "shapes-tiny" / "video_encoder.int8.onnx").is_file()
    assert len((tmp_path / "data" / "shapes" / "train.jsonl").read_text().splitlines()) == 12
    assert "Traceback" not in proc.stderr
