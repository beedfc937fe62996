"""Documented CLI behaviour that had no test: `export --variants` and `--force`, `finetune runs/NAME
--resume`, a hub id with no network, and the torchscript exporter through a whole export."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import SHIPPED_RECIPE, TINY_OVERRIDES, cli_env, data_overrides, vqtool_command
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def graph_names(export_dir) -> set[str]:
    return {p.name for p in export_dir.iterdir() if p.suffix == ".onnx"}


@pytest.mark.slow
def test_export_variants_are_parsed_and_force_replaces_the_export(run_cli, tiny_run, tmp_path):
    out = tmp_path / "exports" / "x"
    proc = run_cli("export", tiny_run, "--output-dir", out, "--variants", " int8 ,, ")  # fp32 always comes first
    assert proc.returncode == 0, proc.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert list(parity["variants"]) == ["fp32", "int8"]
    assert graph_names(out) == {"video_encoder.onnx", "text_encoder.onnx", "video_encoder.int8.onnx", "text_encoder.int8.onnx"}
    (out / "mine.txt").write_text("left by the user")

    bad = run_cli("export", tiny_run, "--output-dir", out, "--force", "--variants", "fp32,int3")
    assert bad.returncode == 2 and "int3" in bad.stderr and "int8-static" in bad.stderr and "Traceback" not in bad.stderr
    assert (out / "mine.txt").is_file(), "a refused export must not touch the existing one"

    proc = run_cli("export", tiny_run, "--output-dir", out, "--force", "--variants", "fp32,fp16")
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads((out / "parity.json").read_text())["variants"]) == ["fp32", "fp16"]
    assert graph_names(out) == {"video_encoder.onnx", "text_encoder.onnx", "video_encoder.fp16.onnx", "text_encoder.fp16.onnx"}
    assert not (out / "mine.txt").exists(), "--force replaces the whole dir"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x"], "no temp or old dirs left beside it"


@pytest.mark.slow
def test_finetune_resumes_from_the_run_dir(run_cli, tiny_recipe, tmp_path, monkeypatch):
    """README: `vqtool finetune runs/NAME --resume` continues an interrupted run from its newest checkpoint."""
    import toolchain.train as train

    recipe = load_recipe(SHIPPED_RECIPE, [*TINY_OVERRIDES, *data_overrides(_data_dir(tiny_recipe)),
                                          "train.checkpoint_every=2", "train.log_every=1"])
    real = train.save_checkpoint

    def crash_after_step_2(work, step, *args, **kwargs):
        out = real(work, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the process dies right after its first checkpoint
        return out

    monkeypatch.setattr(train, "save_checkpoint", crash_after_step_2)
    run_dir = tmp_path / "runs" / "shapes-tiny"
    with pytest.raises(KeyboardInterrupt):
        train.finetune(recipe, run_dir, False, Reporter(quiet=True))
    assert not run_dir.exists() and (tmp_path / "runs" / ".shapes-tiny.partial" / "checkpoints" / "step-00000002").is_dir()

    proc = run_cli("finetune", "runs/shapes-tiny", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr and "step 2 of 4" in proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "step" in r] == [1, 2, 3, 4]
    assert {"event": "resumed", "from_step": 2} in rows
    assert json.loads((run_dir / "eval.json").read_text())["steps"] == 4
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["shapes-tiny"], "the partial dir became the run"


def _data_dir(recipe):
    from pathlib import Path

    return Path(recipe.data.train).parent


def no_network_env(tmp_path, offline: bool) -> dict:
    """Every HTTP client aimed at a closed local port, an empty hub cache; optionally HF_HUB_OFFLINE."""
    env = {**cli_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_DOWNLOAD_TIMEOUT": "3", "NO_PROXY": "", "no_proxy": ""}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[key] = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once
    env.pop("HF_TOKEN", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
    return env


def isolated_network() -> list[str]:
    """`unshare -n` (a network namespace with no interfaces up) where it works, as on CI's root shell."""
    probe = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n"] if probe else []


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_a_hub_id_without_network_is_a_clear_error(tmp_path, offline):
    cmd = [*isolated_network(), *vqtool_command(), "adapters", "plan", str(SHIPPED_RECIPE),
           "--set", "model.name_or_path=openai/clip-vit-base-patch32"]
    proc = subprocess.run(cmd, env=no_network_env(tmp_path, offline), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "model.name_or_path: 'openai/clip-vit-base-patch32'" in message
    assert "could not reach the hub" in message and "no cached copy" in message
    assert "--local-dir DIR" in message and "set model.name_or_path to DIR" in message


@pytest.fixture(scope="module")
def torchscript_run(shapes_data, tmp_path_factory):
    """A tiny run with the motion selector and `export.exporter: torchscript`, exported with every variant."""
    from export.pipeline import export_run
    from toolchain.train import finetune

    tmp = tmp_path_factory.mktemp("torchscript")
    recipe = load_recipe(SHIPPED_RECIPE, [*TINY_OVERRIDES, *data_overrides(shapes_data), "frames.selector=motion",
                                          "export.exporter=torchscript", "train.checkpoint_every=0",
                                          "export.variants=[fp32, fp16, int8, int8-static, int4]"])
    finetune(recipe, tmp / "run", False, Reporter(quiet=True))
    parity = export_run(tmp / "run", tmp / "export", False, None, Reporter(quiet=True))
    return tmp / "export", parity


@pytest.mark.slow
def test_torchscript_exporter_goes_through_every_quantizer_and_gate(torchscript_run):
    export_dir, parity = torchscript_run
    assert parity["exporter"] == "torchscript" and parity["selector"] == "motion"
    assert list(parity["variants"]) == ["fp32", "fp16", "int8", "int8-static", "int4"]
    assert parity["passed"], {v: r["failures"] for v, r in parity["variants"].items()}
    for name, v in parity["variants"].items():
        assert v["video"]["frame_index_agreement"] == 1.0, name  # the motion selector, traced, picks torch's frames
        assert v["video"]["min_cosine"] >= {"fp32": 0.9999, "fp16": 0.999}.get(name, 0.98), name
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["source"]["exporter"] == "torchscript"
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(export_dir / "video_encoder.onnx")).metadata_props}
    assert meta["vqtool.exporter"] == "torchscript" and meta["vqtool.frames.selector"] == "motion"


@pytest.mark.slow
def test_noise_agreement_is_measured_with_the_motion_selector(torchscript_run):
    """parity.json's ±1 LSB agreement, on a selector that reads pixels, equals what select_frames gives
    on the same noisy clips (the uniform selector reports 1.0 whatever the graph does)."""
    import numpy as np
    import torch

    from export.merge import load_run
    from export.parity import lsb_noise
    from export.pipeline import parity_inputs
    from toolchain.frames import select_frames

    export_dir, parity = torchscript_run
    recipe, info = load_run(export_dir.parent / "run")
    clips = parity_inputs(recipe, info).clips
    k = recipe.frames.k
    same = [torch.equal(select_frames(torch.from_numpy(n), k, "motion"), select_frames(torch.from_numpy(c), k, "motion"))
            for c, n in zip(clips, lsb_noise(clips))]
    got = parity["variants"]["fp32"]["video"]["frame_index_agreement_lsb_noise"]
    assert got == pytest.approx(float(np.mean(same))) and got < 1.0, got
