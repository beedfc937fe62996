"""`vqtool bench memory`: one training step of the video-text model per method, each in a fresh process.

Methods: `full` (fp32, every parameter trains, AdamW), `lora` (fp32 frozen base + LoRA), `qlora`
(NF4 + double-quant base + LoRA) and `qlora-8bit` (LLM.int8 base + LoRA). A step is forward of both
towers on B clips of K frames and B captions, the contrastive loss, backward and AdamW's step; for the
generative architectures (memory_llm.py) the video-llm's causal-LM loss on a caption per clip.
Run as `python -m toolchain.bench.memory --method M --checkpoint DIR ...` it measures one method and
prints one JSON line; `run_memory_bench` drives one such process per method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolchain.errors import VqtoolError

METHODS = ("full", "lora", "qlora", "qlora-8bit")
QUANT = {"full": "none", "lora": "none", "qlora": "nf4", "qlora-8bit": "int8"}
TARGETS = {"qlora_vs_lora": 0.5, "qlora_vs_full": 0.25, "trainable_pct": 1.0}


def checkpoint_dir(arch: str, tmp: Path) -> str:
    """A local checkpoint of the arch: the shipped tiny base, or ViT-B/32 from its config (random weights)."""
    from toolchain.bench.memory_llm import GENERATIVE_ARCHS, checkpoint_dir_llm
    from toolchain.models.archs import ARCHS, build_arch
    from toolchain.models.build import base_info

    if arch == "tiny":
        return base_info("tiny-video-clip").path
    if arch in GENERATIVE_ARCHS:
        return checkpoint_dir_llm(arch, tmp)
    if arch not in ARCHS:
        raise VqtoolError(f"--arch {arch!r} is not known; choose one of {', '.join(ARCHS + GENERATIVE_ARCHS)}")
    build_arch(arch, 1).clip.save_pretrained(str(tmp), safe_serialization=True)
    return str(tmp)


def is_video_llm(checkpoint: str) -> bool:
    return json.loads((Path(checkpoint) / "config.json").read_text()).get("model_type") == "llava_onevision"


def build_model(method: str, checkpoint: str, k: int, rank: int, device: str, recompute: bool = False):
    from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout

    if is_video_llm(checkpoint):
        from toolchain.bench.memory_llm import build_llm_model

        return build_llm_model(QUANT[method], checkpoint, k, rank, device, recompute, method == "full")
    from toolchain.models.build import load_clip
    from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
    from toolchain.models.video_clip import VideoCLIP
    from toolchain.recipe import AdaptersSection

    adapters = AdaptersSection(quantization=QUANT[method], rank=rank, alpha=2.0 * rank, target_modules="all-linear")
    clip = load_clip(checkpoint, bnb_config(adapters), device)
    if recompute:  # activation (gradient) checkpointing, as QLoRA is run in practice; same for every method
        clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method != "full":
        keep_training_layout(clip)
        clip = add_lora(clip, adapters)
    size = clip.config.vision_config.image_size
    return VideoCLIP(clip, k, "uniform", size, CLIP_MEAN, CLIP_STD).train()


def random_batch(model, batch: int, k: int, device: str):
    """Random pixels and token ids at full caption length: memory and speed do not depend on values."""
    import torch

    if getattr(model, "family", None) == "video-llm":
        from toolchain.bench.memory_llm import random_llm_batch

        return random_llm_batch(model, batch, k, device)
    cfg = model.clip.config
    gen = torch.Generator().manual_seed(0)
    size = cfg.vision_config.image_size
    pixels = torch.randn(batch, k, 3, size, size, generator=gen).to(device)
    motion = torch.zeros(batch, k, device=device)
    text_len, vocab = cfg.text_config.max_position_embeddings, cfg.text_config.vocab_size
    ids = torch.randint(4, vocab, (batch, text_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    return pixels, motion, ids, mask, [f"caption {i}" for i in range(batch)]


def tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


def quant_state_bytes(state) -> int:
    """Side tensors of a bitsandbytes 4-bit weight (absmax, code, nested double-quant state)."""
    if state is None:
        return 0
    own = sum(tensor_bytes(t) for t in (state.absmax, state.code, getattr(state, "offset", None)) if t is not None)
    return own + quant_state_bytes(getattr(state, "state2", None))


def stored_bytes(model) -> int:
    """Bytes of parameters and buffers as stored, including quantization scales (4-bit and int8)."""
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        total += tensor_bytes(t) + quant_state_bytes(getattr(t, "quant_state", None))
        scb = getattr(t, "SCB", None)
        total += tensor_bytes(scb) if scb is not None else 0
    return total


def optimizer_bytes(opt) -> int:
    return sum(tensor_bytes(v) for state in opt.state.values() for v in state.values() if hasattr(v, "numel"))


def train_step(model, opt, batch) -> None:
    from toolchain.tasks.generative import lm_loss
    from toolchain.tasks.retrieval import contrastive_loss

    loss = lm_loss if getattr(model, "family", None) == "video-llm" else contrastive_loss
    loss(model, *batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed_steps(model, opt, batch, steps: int, device: str) -> list[float]:
    import torch

    times = []
    for _ in range(steps + 1):  # the first is the warm-up (AdamW allocates its state there)
        t0 = time.perf_counter()
        train_step(model, opt, batch)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def live_peak_mb(model, opt, batch) -> float:
    """Weights + optimizer state + batch + the peak of tensors one more step allocates (see live.py)."""
    from toolchain.bench.live import LiveTensorPeak

    static = stored_bytes(model) + optimizer_bytes(opt)
    static += sum(tensor_bytes(t) for t in batch if hasattr(t, "numel"))
    mode = LiveTensorPeak()
    with mode:
        train_step(model, opt, batch)
    return round((static + mode.peak) / 2**20, 1)


def measure(method: str, checkpoint: str, k: int, batch: int, steps: int, rank: int, recompute: bool = False) -> dict:
    """Everything about one method's training step, from inside a fresh process."""
    import torch

    from toolchain.adapters.qlora import trainable_parameters
    from toolchain.bench.peak import current_mb, peak_kind, peak_mb, reset_peak
    from toolchain.train import pick_device

    import bitsandbytes, peft, transformers  # noqa: F401  (loaded before the floor is read)

    device = pick_device()
    floor = current_mb(device)  # every library imported, no model yet
    torch.manual_seed(0)
    model = build_model(method, checkpoint, k, rank, device, recompute)
    data = random_batch(model, batch, k, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    load_peak = peak_mb(device)
    was_reset = reset_peak(device)  # on CPU this first returns freed heap to the OS
    baseline = current_mb(device)
    times = timed_steps(model, opt, data, steps, device)
    step_peak = peak_mb(device)
    live = live_peak_mb(model, opt, data) if device == "cpu" else None
    trainable, total = trainable_parameters(model)
    base = total if method == "full" else total - trainable  # adapters are not part of the base
    return {
        "method": method, "device": device, "peak_kind": peak_kind(device, was_reset),
        "peak_mb": round(step_peak, 1), "baseline_mb": round(baseline, 1), "floor_mb": round(floor, 1),
        "step_delta_mb": round(step_peak - baseline, 1), "peak_above_floor_mb": round(step_peak - floor, 1),
        "live_peak_mb": live, "load_peak_mb": round(load_peak, 1), "weight_mb": round(stored_bytes(model) / 2**20, 1),
        "optimizer_mb": round(optimizer_bytes(opt) / 2**20, 1),
        "trainable_params": trainable, "base_params": base, "trainable_pct": round(100 * trainable / base, 4),
        "step_s": round(statistics.median(times[1:]), 4), "warmup_step_s": round(times[0], 4),
        "steps": steps, "threads": torch.get_num_threads(), "grad_checkpointing": recompute,
        "malloc_env": malloc_env(),
    }


def malloc_env() -> dict:
    """glibc allocator settings in effect (MALLOC_MMAP_THRESHOLD_ and co.): they change peak RSS a lot."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure one method's training step (used by vqtool bench memory).")
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    from toolchain.quiet import quiet_libraries

    quiet_libraries()
    try:
        result = measure(args.method, args.checkpoint, args.frames, args.batch, args.steps, args.rank,
                         args.grad_checkpointing)
    except Exception as exc:  # a method that cannot train is a failed row, never a silent skip
        print(json.dumps(failed_row(args.method, f"{type(exc).__name__}: {exc}")), flush=True)
        raise
    print(json.dumps(result), flush=True)


def failed_row(method: str, why: str) -> dict:
    return {"method": method, "failed": why}


def run_method(method: str, checkpoint: str, frames: int, batch: int, steps: int, rank: int,
               recompute: bool = False) -> dict:
    cmd = [sys.executable, "-m", "toolchain.bench.memory", "--method", method, "--checkpoint", checkpoint,
           "--frames", str(frames), "--batch", str(batch), "--steps", str(steps), "--rank", str(rank)]
    cmd += ["--grad-checkpointing"] if recompute else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:  # the row says why; the bench goes on with the other methods
        last = (proc.stdout.strip().splitlines() or ["{}"])[-1]
        why = json.loads(last).get("failed") if last.startswith("{") else None
        return failed_row(method, f"{why or 'the process failed'} (exit {proc.returncode}); "
                                  f"stderr ends: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def failures(result: dict) -> list[str]:
    """`method: why` for every method whose step failed (the CLI exits 1 after writing the table)."""
    return [f"{name}: {row['failed']}" for name, row in result["methods"].items() if "failed" in row]


def ratios(rows: dict) -> dict:
    """Side-by-side ratios from one run; None where a method is missing or failed."""

    def ratio(a: str, b: str, key: str):
        ra, rb = rows.get(a, {}), rows.get(b, {})
        return round(ra[key] / rb[key], 3) if key in ra and key in rb and rb[key] else None

    out = {f"{a}_vs_{b}": ratio(a, b, "peak_mb") for a, b in (("qlora", "lora"), ("qlora", "full"))}
    out.update({f"{a}_vs_{b}_above_floor": ratio(a, b, "peak_above_floor_mb") for a, b in (("qlora", "lora"), ("qlora", "full"))})
    out.update({f"{a}_vs_{b}_live": ratio(a, b, "live_peak_mb") for a, b in (("qlora", "lora"), ("qlora", "full"))})
    out.update({f"{a}_vs_{b}_weights": ratio(a, b, "weight_mb") for a, b in (("qlora", "lora"), ("qlora", "full"))})
    q = rows.get("qlora", {})
    out["trainable_pct"] = q.get("trainable_pct")
    return out


def check_methods(methods: list[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise VqtoolError(f"--methods: {', '.join(unknown) or 'none given'} not known; choose from {', '.join(METHODS)}")


def run_memory_bench(arch: str, frames: int, batch: int, steps: int, rank: int, methods: list[str], report,
                     recompute: bool = False) -> dict:
    check_methods(methods)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-") as tmp:
        report.say({"tiny": "using the tiny base", "smollm2": "reading the real SmolLM2-135M from its GGUF file "
                    "(dequantized) and composing it with the tiny vision tower"}.get(arch, f"building the {arch} checkpoint (random weights)"))
        checkpoint = checkpoint_dir(arch, Path(tmp))
        with report.task("training step per method", len(methods)) as advance:
            for method in methods:
                rows[method] = run_method(method, checkpoint, frames, batch, steps, rank, recompute)
                advance(1, method)
    return {"arch": arch, "frames": frames, "batch": batch, "rank": rank, "steps": steps, "grad_checkpointing": recompute,
            "methods": rows, "ratios": ratios(rows), "targets": TARGETS}


def markdown(result: dict) -> str:
    head = (f"{result['arch']}, K = {result['frames']} frames, batch {result['batch']}, LoRA rank {result['rank']} "
            f"on all linears; step time = median of {result['steps']} steps after one warm-up step"
            + ("; gradient checkpointing on for every method." if result.get("grad_checkpointing") else "."))
    lines = [head, "", "| method | peak MB | live tensors peak MB | baseline MB | step delta MB | above floor MB | "
             "weights MB | optimizer MB | trainable params | % of base | step s |", "|---|" + "---:|" * 10]
    for name, r in result["methods"].items():
        if "failed" in r:
            lines.append(f"| {name} | FAILED: {r['failed'].splitlines()[0][:200].replace('|', '/')} |" + " |" * 9)
            continue
        live = "–" if r.get("live_peak_mb") is None else f"{r['live_peak_mb']:.0f}"
        lines.append(f"| {name} | {r['peak_mb']:.0f} | {live} | {r['baseline_mb']:.0f} | {r['step_delta_mb']:.0f} | "
                     f"{r['peak_above_floor_mb']:.0f} | {r['weight_mb']:.1f} | {r['optimizer_mb']:.1f} | "
                     f"{r['trainable_params']:,} | {r['trainable_pct']:.3f} | {r['step_s']:.3f} |")
    kinds = {r["peak_kind"] for r in result["methods"].values() if "peak_kind" in r}
    lines += ["", f"peak = {', '.join(sorted(kinds))} over the warm-up and measured steps; ratios: "
              + ", ".join(f"{k} {v}" for k, v in result["ratios"].items())]
    settings = sorted({" ".join(f"{k}={v}" for k, v in r.get("malloc_env", {}).items())
                       for r in result["methods"].values()} - {""})
    if settings:
        lines += ["", f"glibc allocator environment: {'; '.join(settings)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main()
