"""examples/score_video.py runs with torch blocked on an export and a video it did not make."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import BLOCK_TORCH, REPO, TINY_K, cli_env
from toolchain.data.synth import write_video

EXAMPLE = REPO / "examples" / "score_video.py"
CAPTIONS = ["a red circle moves right", "a blue square moves up", "a green triangle moves down"]
RUN_EXAMPLE = BLOCK_TORCH + """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_example(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_EXAMPLE, str(EXAMPLE), *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def red_circle_video(tmp_path_factory):
    """A webm the tool did not write: a red disc moving right on grey, 20 frames of 60x80."""
    frames = np.full((20, 60, 80, 3), 90, dtype=np.uint8)
    yy, xx = np.mgrid[:60, :80]
    for t in range(20):
        frames[t][(yy - 30) ** 2 + (xx - 10 - 3 * t) ** 2 < 64] = (230, 30, 30)
    path = tmp_path_factory.mktemp("example") / "red_right.webm"
    write_video(path, frames, codec="libvpx-vp9")
    return path


def test_example_ranks_captions_without_torch(tiny_export, red_circle_video):
    from export.runtime import VideoTextRuntime

    proc = run_example(tiny_export, red_circle_video, *CAPTIONS, "--variant", "int8")
    assert proc.returncode == 0, proc.stderr
    head, *rows = proc.stdout.strip().splitlines()
    assert "CPUExecutionProvider" in head and len(json.loads(head.split("frames ")[1].split(" selected")[0])) == TINY_K
    got = {caption: float(score) for score, caption in (row.split("  ", 1) for row in rows)}
    assert set(got) == set(CAPTIONS) and list(got.values()) == sorted(got.values(), reverse=True)
    expected = VideoTextRuntime(tiny_export, variant="int8", threads=1).scores([red_circle_video], CAPTIONS)[0]
    assert np.allclose([got[c] for c in CAPTIONS], expected, atol=1e-4)


def test_example_reports_a_bad_export_dir_in_one_line(tmp_path, red_circle_video):
    proc = run_example(tmp_path / "missing", red_circle_video, "a caption")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: export dir") and "vqtool export" in proc.stderr
