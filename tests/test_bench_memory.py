"""`vqtool bench memory` on the tiny base: every method in its own process, and the relations that must hold."""

from __future__ import annotations

import json

import pytest

FIELDS = {"peak_mb", "baseline_mb", "step_delta_mb", "weight_mb", "optimizer_mb", "trainable_params",
          "base_params", "trainable_pct", "step_s", "peak_kind"}


@pytest.mark.slow
def test_bench_memory_tiny_json_and_relations(run_cli, tmp_path):
    proc = run_cli("bench", "memory", "--arch", "tiny", "--frames", "2", "--steps", "1", "--json",
                   "--out", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    m = result["methods"]
    assert list(m) == ["full", "lora", "qlora", "qlora-8bit"]
    for name in ("full", "lora", "qlora", "qlora-8bit"):  # every method must run: a failure is no skip
        assert "failed" not in m[name], m[name]
        assert FIELDS <= set(m[name]), (name, FIELDS - set(m[name]))
        assert m[name]["peak_mb"] > 0 and m[name]["step_s"] > 0
        assert m[name]["peak_mb"] >= 0.9 * m[name]["baseline_mb"]  # peak since the reset starts at the baseline
    full, lora, qlora = m["full"], m["lora"], m["qlora"]
    # Full fine-tuning trains the whole base; the adapters train far fewer, the same in both LoRA variants.
    assert full["trainable_params"] == full["base_params"] and full["trainable_pct"] == 100
    assert full["trainable_params"] > lora["trainable_params"] == qlora["trainable_params"] > 0
    assert full["base_params"] == lora["base_params"] == qlora["base_params"]
    # 4-bit storage is smaller than fp32; AdamW keeps two fp32 moments per trainable parameter.
    assert qlora["weight_mb"] < lora["weight_mb"]
    # live tensors: weights + AdamW state + what the step allocates; full fine-tuning holds the most
    assert full["live_peak_mb"] > lora["live_peak_mb"] > qlora["live_peak_mb"] > qlora["weight_mb"]
    assert full["live_peak_mb"] >= full["weight_mb"] * 3  # weights + gradients + two AdamW moments
    assert full["optimizer_mb"] == pytest.approx(8 * full["trainable_params"] / 2**20, abs=0.1)
    assert lora["optimizer_mb"] == pytest.approx(8 * lora["trainable_params"] / 2**20, abs=0.1)
    int8 = m["qlora-8bit"]  # LLM.int8 stores one byte per base weight: between fp32 LoRA and NF4 QLoRA
    assert qlora["weight_mb"] < int8["weight_mb"] < lora["weight_mb"]
    assert int8["trainable_params"] == lora["trainable_params"] and int8["base_params"] == lora["base_params"]
    assert result["ratios"]["qlora_vs_lora"] == round(qlora["peak_mb"] / lora["peak_mb"], 3)
    assert json.loads((tmp_path / "memory.json").read_text()) == result
    assert "| qlora |" in (tmp_path / "memory.md").read_text()


@pytest.mark.slow
def test_bench_memory_generative_tiny_relations(run_cli):
    """The video-llm's step (causal-LM loss on a caption after the video tokens), full vs LoRA vs QLoRA."""
    proc = run_cli("bench", "memory", "--arch", "tiny-llm", "--frames", "2", "--steps", "1", "--methods",
                   "full,lora,qlora", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])["methods"]
    full, lora, qlora = m["full"], m["lora"], m["qlora"]
    assert full["trainable_params"] == full["base_params"] > lora["trainable_params"] == qlora["trainable_params"] > 0
    assert qlora["weight_mb"] < lora["weight_mb"] and full["optimizer_mb"] > lora["optimizer_mb"]
    assert full["live_peak_mb"] > lora["live_peak_mb"] > qlora["live_peak_mb"]


def test_bench_memory_rejects_unknown_method(run_cli):
    proc = run_cli("bench", "memory", "--arch", "tiny", "--methods", "full,dora")
    assert proc.returncode == 2 and "dora" in proc.stderr and "qlora-8bit" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stored_bytes_counts_4bit_scales():
    """The 4-bit weight itself is half a byte per value; its absmax scales must be counted too."""
    import torch
    from transformers import BitsAndBytesConfig

    from toolchain.bench.memory import stored_bytes
    from toolchain.models.build import base_info, load_clip

    path = base_info("tiny-video-clip").path
    fp32 = load_clip(path)
    nf4 = load_clip(path, BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.float32))
    packed = sum(p.numel() * p.element_size() for p in nf4.parameters()) + sum(b.numel() * b.element_size() for b in nf4.buffers())
    assert packed < stored_bytes(nf4) < stored_bytes(fp32)


def test_live_tensor_peak_counts_what_is_alive_not_what_was_freed():
    import torch

    from toolchain.bench.live import LiveTensorPeak

    mib = 2**20
    mode = LiveTensorPeak()
    with mode:
        a = torch.zeros(mib // 4)  # 1 MiB
        b = torch.zeros(2 * mib // 4)  # 2 MiB, then freed
        del b
        c = torch.zeros(mib // 4, requires_grad=True)
        (c * 2).sum().backward()  # c*2 is a temporary; c.grad stays
        d = torch.zeros(mib // 4)  # a + c + grad + d: the new peak, 4 MiB (a + b was 3)
        del d
    assert mode.peak == pytest.approx(4 * mib, rel=0.01)
    assert mode.now == pytest.approx(3 * mib, rel=0.01)  # a, c and c.grad are still alive
    del a, c
    assert mode.now == pytest.approx(0, abs=1024)


def test_memory_markdown_names_the_allocator_environment(monkeypatch):
    """MALLOC_MMAP_THRESHOLD_ moves peak RSS by hundreds of MB, so a table must say when it was set."""
    from toolchain.bench.memory import malloc_env, markdown

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    row = {"peak_mb": 1.0, "live_peak_mb": 1.0, "baseline_mb": 1.0, "step_delta_mb": 0.0, "peak_above_floor_mb": 1.0,
           "weight_mb": 1.0, "optimizer_mb": 0.0, "trainable_params": 1, "trainable_pct": 1.0, "step_s": 1.0,
           "peak_kind": "peak RSS (VmHWM) since reset", "malloc_env": malloc_env()}
    result = {"arch": "tiny", "frames": 2, "batch": 2, "rank": 8, "steps": 1, "methods": {"qlora": row}, "ratios": {}}
    assert "glibc allocator environment: MALLOC_MMAP_THRESHOLD_=131072" in markdown(result)
    row["malloc_env"] = {}
    assert "allocator" not in markdown(result)


def test_a_method_that_fails_is_a_failed_row_and_the_command_exits_1(tmp_path):
    """The method's process dies (here: no checkpoint to load); its row says FAILED and why, the
    others still run, the files are written, and the exit code is 1, never a silent skip."""
    import subprocess
    import sys
    import textwrap

    from conftest import cli_env
    from toolchain.bench.memory import markdown, run_method

    row = run_method("qlora-8bit", str(tmp_path / "no-such-checkpoint"), 2, 2, 1, 4)
    assert set(row) == {"method", "failed"} and row["method"] == "qlora-8bit"
    assert "no-such-checkpoint" in row["failed"] and "exit 1" in row["failed"]

    code = textwrap.dedent(f"""
        import sys
        import toolchain.bench.memory as memory
        real = memory.run_method
        def run_method(method, checkpoint, *args):  # qlora-8bit's process gets a checkpoint that is not there
            return real(method, "/no/such/checkpoint" if method == "qlora-8bit" else checkpoint, *args)
        memory.run_method = run_method
        from toolchain.cli import main
        sys.argv = ["vqtool", "bench", "memory", "--arch", "tiny", "--frames", "2", "--steps", "1",
                    "--methods", "lora,qlora-8bit", "--out", {str(tmp_path)!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "qlora-8bit: " in proc.stderr and "/no/such/checkpoint" in proc.stderr
    result = json.loads((tmp_path / "memory.json").read_text())
    assert "failed" in result["methods"]["qlora-8bit"] and "failed" not in result["methods"]["lora"]
    assert result["methods"]["lora"]["peak_mb"] > 0  # the method that works still ran and measured
    table = (tmp_path / "memory.md").read_text()
    assert "| qlora-8bit | FAILED: " in table and "| lora | FAILED" not in table
    assert markdown(result) == table
