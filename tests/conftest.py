"""Shared fixtures: ONE tiny fine-tuned run and ONE export of it per session, plus a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

# One intra-op thread for torch (here and in every `vqtool` subprocess, which inherit the variable).
# The tiny model gains nothing from a second thread, and when anything else shares the 2 CPU cores,
# spinning OpenMP threads make a 2-thread run several times slower than a 1-thread one.
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
# The decoded-frame cache of every run in this session (and its `vqtool` subprocesses) stays out of ~/.cache.
os.environ.setdefault("VQTOOL_CACHE_DIR", tempfile.mkdtemp(prefix="vqtool-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
SHIPPED_RECIPE = REPO / "recipes" / "shapes-tiny.yaml"
CAPTION_RECIPE = REPO / "recipes" / "shapes-caption-tiny.yaml"
QA_RECIPE = REPO / "recipes" / "shapes-qa-tiny.yaml"
# the same tiny run for each task's recipe (retrieval is the shipped default)
TASK_RECIPES = {"retrieval": SHIPPED_RECIPE, "captioning": CAPTION_RECIPE}
TINY_K = 4
TINY_STEPS = 4
# Small enough for 2 CPU cores in seconds; the eval set (48 clips) is fixed by the synthetic set.
TINY_OVERRIDES = [
    f"train.max_steps={TINY_STEPS}",
    "train.batch_size=4",
    "train.log_every=2",
    "train.warmup_steps=0",  # full lr from step 1, so the 4 steps move the adapter measurably
    f"frames.k={TINY_K}",
    "export.latency_runs=3",
    f"export.threads={THREADS}",
]


# Prepended to `python -c` code: from then on, any attempt to import torch fails loudly.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name})")
            return None
    sys.meta_path.insert(0, BlockTorch())
""")


def data_overrides(data_dir: Path) -> list[str]:
    return [f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'eval.jsonl'}"]


def vqtool_command() -> list[str]:
    """The installed console script (what users run); falls back to calling main() if it is absent."""
    script = Path(sys.executable).with_name("vqtool")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'vqtool'; from toolchain.cli import main; main()"]


def cli_env() -> dict:
    # Wide, colourless output so messages are not wrapped or styled in assertions.
    return {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    import torch

    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args, cwd=None, timeout=300) -> CompletedProcess of the real `vqtool` command."""

    def run(*args, cwd=None, timeout=300):
        return subprocess.run(
            [*vqtool_command(), *map(str, args)], cwd=cwd, env=cli_env(),
            capture_output=True, text=True, timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """The synthetic shapes set with 12 training clips (eval is always 48 clips)."""
    from toolchain.data.synth import synthesize

    out = tmp_path_factory.mktemp("shapes")
    synthesize(out, videos=12, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_recipe(shapes_data):
    from toolchain.recipe import load_recipe

    return load_recipe(SHIPPED_RECIPE, [*TINY_OVERRIDES, *data_overrides(shapes_data)])


@pytest.fixture(scope="session")
def tiny_caption_recipe(shapes_data):
    from toolchain.recipe import load_recipe

    return load_recipe(CAPTION_RECIPE, [*TINY_OVERRIDES, *data_overrides(shapes_data), "generation.max_new_tokens=6"])


@pytest.fixture(scope="session")
def tiny_caption_run(tmp_path_factory, tiny_caption_recipe) -> Path:
    """A finished captioning run dir (QLoRA nf4 on the built-in tiny-video-llm, 4 steps)."""
    from toolchain.progress import Reporter
    from toolchain.train import finetune

    run_dir = tmp_path_factory.mktemp("runs") / "shapes-caption-tiny"
    finetune(tiny_caption_recipe, run_dir, False, Reporter(quiet=True))
    return run_dir


@pytest.fixture(scope="session")
def tiny_caption_export(tmp_path_factory, tiny_caption_run) -> Path:
    """The export dir of `tiny_caption_run` (fp32 + int8 decoders, parity checked)."""
    from export.gen_pipeline import export_video_llm
    from toolchain.progress import Reporter

    out = tmp_path_factory.mktemp("exports") / "shapes-caption-tiny"
    parity = export_video_llm(tiny_caption_run, out, False, ["fp32", "int8"], Reporter(quiet=True))
    assert parity["passed"], parity.get("failures")
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_recipe) -> Path:
    """A finished run dir from the Python API (QLoRA nf4 on the built-in tiny base, 4 steps)."""
    from toolchain.progress import Reporter
    from toolchain.train import finetune

    run_dir = tmp_path_factory.mktemp("runs") / "shapes-tiny"
    finetune(tiny_recipe, run_dir, False, Reporter(quiet=True))
    return run_dir


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """The export dir of `tiny_run` (fp32 + int8, parity checked)."""
    from export.pipeline import export_run
    from toolchain.progress import Reporter

    out = tmp_path_factory.mktemp("exports") / "shapes-tiny"
    export_run(tiny_run, out, False, None, Reporter(quiet=True))
    return out


@pytest.fixture(scope="session")
def merged(tiny_run):
    """(as-trained 4-bit model with adapters, merged float32 model, recipe, base info)."""
    from export.merge import merged_model

    return merged_model(tiny_run)


def copy_with_manifest(export_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of an export dir whose manifest.json went through `edit(dict)`."""
    import json
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(export_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def five_variant_export(tmp_path_factory, tiny_run) -> tuple[Path, dict]:
    """(export dir, parity report) of `tiny_run` with all five variants (fp32, fp16, int8, int8-static, int4)."""
    from export.pipeline import export_run
    from toolchain.progress import Reporter

    out = tmp_path_factory.mktemp("all-variants") / "export"
    parity = export_run(tiny_run, out, False, ["fp32", "fp16", "int8", "int8-static", "int4"], Reporter(quiet=True))
    return out, parity
