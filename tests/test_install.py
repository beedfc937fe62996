"""Installs in fresh venvs: `pip install vqtool` without extras, and the runtime image's own pip lines
(read from the Dockerfile). Neither gets torch; `vqtool infer` runs on an export through each."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env
from test_docker import RUNTIME_REQUIREMENTS, stages

pytestmark = pytest.mark.slow
TEXTS = ["a red circle moves left", "a blue square moves up"]


def pip(venv: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    """This interpreter's pip working on the venv (pip --python): the venv needs no pip of its own."""
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path


def venv_env() -> dict:
    env = cli_env()
    env.pop("PYTHONPATH", None)
    return env


def installed(venv: Path) -> dict[str, str]:
    rows = json.loads(pip(venv, "list", "--format", "json").stdout)
    return {row["name"].lower(): row["version"] for row in rows}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """vqtool's wheel, built from exactly what the Dockerfile's `wheel` stage copies."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheels")
    copies = [line.split()[1:-1] for line in stages()["wheel"] if line.startswith("COPY ")]
    for name in (n for names in copies for n in names):
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("vqtool-*.whl"))


@pytest.fixture(scope="module")
def reference_scores(tiny_export, shapes_data):
    from export.runtime import VideoTextRuntime

    video = shapes_data / "videos" / "eval_0000.mp4"
    return video, VideoTextRuntime(tiny_export, threads=1).scores([video], TEXTS)


@pytest.fixture(scope="module")
def reference_caption(tiny_caption_export, shapes_data):
    from export.gen_runtime import VideoLLMRuntime

    video = shapes_data / "videos" / "eval_0001.mp4"
    return video, VideoLLMRuntime(tiny_caption_export, "int8", threads=1).generate(video)["text"]


def check_torch_free_generate(venv: Path, export: Path, reference_caption, cwd: Path) -> None:
    """`vqtool infer --prompt` on a video-llm export through the venv: the caption the repo's runtime gives."""
    video, expected = reference_caption
    args = ["infer", export, "--video", video, "--variant", "int8", "--json", "--threads", "1"]
    proc = subprocess.run([str(venv / "bin" / "vqtool"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=venv_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"] == [expected]


def check_torch_free_infer(venv: Path, tiny_export: Path, reference_scores, cwd: Path) -> dict:
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True,
                              cwd=cwd, env=venv_env(), timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    video, expected = reference_scores
    args = ["infer", tiny_export, "--video", video, "--json", "--threads", "1"] + [a for t in TEXTS for a in ("--text", t)]
    # cwd outside the repo: the venv must import vqtool from what it installed, not from the source tree
    proc = subprocess.run([str(venv / "bin" / "vqtool"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=venv_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["providers"] == ["CPUExecutionProvider"] and len(out["frame_indices"][0]) > 0
    assert np.abs(np.array(out["scores"]) - expected).max() < 1e-4
    return out


def test_no_extras_install_runs_infer_without_torch(tmp_path, wheel, tiny_export, reference_scores,
                                                    tiny_caption_export, reference_caption):
    venv = fresh_venv(tmp_path / "venv")
    pip(venv, "install", "-q", wheel)  # what `pip install vqtool` does: its dependencies, no extras
    have = installed(venv)
    assert "torch" not in have and "transformers" not in have and "onnxruntime" in have
    check_torch_free_infer(venv, tiny_export, reference_scores, tmp_path)
    check_torch_free_generate(venv, tiny_caption_export, reference_caption, tmp_path)
    # Training needs the extra: a clear one-line error, not an ImportError traceback.
    proc = subprocess.run([str(venv / "bin" / "vqtool"), "finetune", str(REPO / "recipes" / "shapes-tiny.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, env=venv_env(), timeout=120)
    assert proc.returncode == 2 and "pip install 'vqtool[train]'" in proc.stderr and "Traceback" not in proc.stderr


def runtime_pip_commands() -> list[list[str]]:
    """The `pip install` commands of the runtime stage's RUN line, as the image runs them."""
    run = next(line for line in stages()["runtime"] if line.startswith("RUN ") and "runtime-gpu.txt" in line)
    parts = [shlex.split(part) for part in run.removeprefix("RUN ").split("&&")]
    return [argv for argv in parts if argv[:2] == ["pip", "install"]]


def test_runtime_image_pip_lines_install_and_run(tmp_path, wheel, tiny_export, reference_scores,
                                                 tiny_caption_export, reference_caption):
    """The Dockerfile's two pip commands, in a clean venv, with CPU onnxruntime at the pinned version in
    place of onnxruntime-gpu (no GPU here) and pip's cache allowed (--no-cache-dir only keeps layers small)."""
    gpu_lines = RUNTIME_REQUIREMENTS.read_text()
    assert "onnxruntime-gpu[cuda,cudnn]==" in gpu_lines
    cpu_reqs = tmp_path / "runtime-cpu.txt"
    cpu_reqs.write_text(gpu_lines.replace("onnxruntime-gpu[cuda,cudnn]==", "onnxruntime=="))
    swap = {"/tmp/runtime-gpu.txt": str(cpu_reqs), "/tmp/wheels/vqtool-*.whl": str(wheel)}
    commands = runtime_pip_commands()
    assert len(commands) == 2 and "--no-deps" in commands[1]
    venv = fresh_venv(tmp_path / "venv")
    for argv in commands:
        pip(venv, *[swap.get(a, a) for a in argv[1:] if a != "--no-cache-dir"], "-q")
    have = installed(venv)
    pinned_ort = next(line for line in cpu_reqs.read_text().splitlines() if line.startswith("onnxruntime=="))
    assert have["onnxruntime"] == pinned_ort.split("==")[1] and "onnxruntime-gpu" not in have
    assert "torch" not in have and have["vqtool"]
    pip(venv, "check")  # vqtool's own requirements are met by the pinned list
    check_torch_free_infer(venv, tiny_export, reference_scores, tmp_path)
    check_torch_free_generate(venv, tiny_caption_export, reference_caption, tmp_path)  # the image generates too


def test_gpu_requirements_resolve_without_the_cpu_wheel(tmp_path):
    """The real GPU list, resolved (not installed: a GB of CUDA wheels): onnxruntime-gpu and its CUDA/cuDNN
    wheels come in, the CPU onnxruntime and torch never do."""
    venv = fresh_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    pip(venv, "install", "--dry-run", "-q", "--report", report, "-r", RUNTIME_REQUIREMENTS)
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names and "nvidia-cudnn-cu13" in names
    assert "onnxruntime" not in names and "torch" not in names
