"""The `vqtool` command line: every command is a thin call into a module below it."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from toolchain.errors import MissingExtraError, ParityError, VqtoolError

app = typer.Typer(
    help="Fine-tune video-text models with QLoRA and ship them as parity-checked ONNX for the edge.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Check and show recipes.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: generate the synthetic shapes set; show or clear the frame cache.", no_args_is_help=True)
base_app = typer.Typer(help="Base models: compose a dual encoder from two checkpoints.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(base_app, name="base")
bench_app = typer.Typer(help="Benchmarks: measured side by side in one run, medians and ratios.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapters: how the LoRA budget is split over vision, text and fusion.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(adapters_app, name="adapters")
app.add_typer(bench_app, name="bench")
err = Console(stderr=True)

SetOpt = Annotated[list[str], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-4 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output directory if it exists.")]
TRAIN_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "onnx", "safetensors")


def require_train_extra() -> None:
    from toolchain.quiet import quiet_libraries

    quiet_libraries()  # before the imports: bitsandbytes logs about optional kernels on import
    for module in TRAIN_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(module, "train") from None


def reporter(quiet: bool = False, silent: bool = False):
    from toolchain.progress import Reporter

    if silent:  # a worker other than the main one: the main one reports, warnings included
        return Reporter(Console(file=open(os.devnull, "w")), quiet=True)
    return Reporter(err, quiet=quiet)


@app.command()
def finetune(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. recipes/shapes-tiny.yaml; with --resume also a run dir.")],
    output_dir: Annotated[Optional[Path], typer.Option(help="Run dir (default: runs/NAME).")] = None,
    force: ForceOpt = False,
    set_: SetOpt = [],
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its newest checkpoint.")] = False,
    processes: Annotated[int, typer.Option(min=1, help="Data-parallel training processes (accelerate DDP; gloo on CPU, one GPU each).")] = 1,
):
    """Fine-tune with QLoRA (4-bit base + LoRA) and write runs/NAME/ (checkpointed; --resume continues)."""
    cfg, target = finetune_target(recipe, output_dir, resume, set_)  # a bad key fails before any model loads
    require_train_extra()
    from toolchain import distributed
    from toolchain.train import finetune as run, prepare_run

    if processes > 1 and not distributed.is_worker():
        prepare_run(cfg, target, force, resume, reporter(), distributed.Processes(), processes)  # user mistakes: here, once
        argv = ["finetune", str(recipe), "--output-dir", str(target), "--resume", *(["--force"] * force)]
        distributed.launch(processes, argv + [a for item in set_ for a in ("--set", item)])
        return  # the main worker printed the summary
    main_process = int(os.environ.get("RANK", "0")) == 0
    result = run(cfg, target, force, reporter(silent=not main_process), resume)
    if result is not None:  # None: a worker other than the main one
        print_finetune_summary(result, target)


def finetune_target(recipe: Path, output_dir: Optional[Path], resume: bool, sets: list[str]):
    """(recipe, run dir): from a recipe file, or with --resume from a run dir's interrupted copy."""
    from toolchain.recipe import load_recipe

    if not (resume and (recipe.is_dir() or recipe.suffix not in (".yaml", ".yml"))):
        cfg = load_recipe(recipe, sets)
        return cfg, output_dir or Path("runs") / cfg.name
    from toolchain.errors import CheckpointError
    from toolchain.rundir import run_dir_of, work_dir

    target = output_dir or run_dir_of(recipe)
    saved = work_dir(target) / "recipe.yaml"
    if not saved.is_file():
        done = " (that run is complete)" if (target / "eval.json").is_file() else ""
        raise CheckpointError(f"nothing to resume at {target}{done}: {saved} not found. "
                              "Start a run with `vqtool finetune RECIPE`")
    return load_recipe(saved, sets), target


def print_finetune_summary(result: dict, target: Path) -> None:
    b, f = result["base"]["t2v"], result["finetuned"]["t2v"]
    err.print(f"t2v R@1 on {result['eval_clips']} eval clips: base {b['r1']:.1f} -> fine-tuned {f['r1']:.1f}")
    within = result["base"].get("t2v_within_group_r1"), result["finetuned"].get("t2v_within_group_r1")
    if None not in within:
        err.print(f"direction R@1 (same colour and shape, chance 25): base {within[0]:.1f} -> fine-tuned {within[1]:.1f}")
    skipped = result.get("skipped", [])
    if skipped:
        err.print(f"skipped {len(skipped)} unreadable video(s) (listed in {target / 'metrics.jsonl'} and eval.json):",
                  highlight=False, markup=False)
        for item in skipped:
            err.print(f"  {item['video']}: {item['reason']}", highlight=False, markup=False)
    typer.echo(f"run written to {target}  (next: vqtool export {target})")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run dir from `vqtool finetune`.")],
    output_dir: Annotated[Optional[Path], typer.Option(help="Export dir (default: exports/RUN_NAME).")] = None,
    force: ForceOpt = False,
    variants: Annotated[Optional[str], typer.Option(help="Comma list, e.g. fp32,int8 (default: the recipe's).")] = None,
):
    """Merge adapters, export ONNX (uint8 frames in), quantize and check parity of every variant."""
    require_train_extra()
    from export.pipeline import export_run

    target = output_dir or Path("exports") / Path(run_dir).resolve().name
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    parity = export_run(Path(run_dir), target, force, chosen, reporter())
    typer.echo((target / "parity.md").read_text())
    typer.echo(f"export written to {target}")
    if not parity["passed"]:
        raise ParityError(f"parity gate failed (files kept in {target} for inspection); see parity.md") from None


@app.command()
def infer(
    export_dir: Annotated[Path, typer.Argument(help="An export dir from `vqtool export`.")],
    video: Annotated[list[Path], typer.Option("--video", help="Video file (repeatable).")],
    text: Annotated[list[str], typer.Option("--text", help="Caption to score (repeatable).")],
    variant: Annotated[str, typer.Option(help="Which graph variant to run, e.g. fp32 or int8.")] = "fp32",
    providers: Annotated[str, typer.Option(help="auto (TensorRT > CUDA > CPU, as available), or e.g. cuda, cpu, tensorrt, a comma list or full ONNX Runtime names.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: ONNX Runtime's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Score videos against captions with ONNX Runtime only (no torch needed)."""
    from export.runtime import VideoTextRuntime

    rt = VideoTextRuntime(export_dir, variant=variant, providers=providers, threads=threads)
    embeds, indices = zip(*(rt.encode_video(v) for v in video))
    import numpy as np

    scores = np.concatenate(embeds) @ rt.encode_text(list(text)).T
    if as_json:
        out = {"videos": [str(v) for v in video], "texts": list(text), "scores": scores.round(6).tolist(),
               "frame_indices": np.concatenate(indices).tolist(), "variant": variant, "providers": rt.providers}
        typer.echo(json.dumps(out))
        return
    print_scores(video, text, scores, rt.providers[0])


def print_scores(videos, texts, scores, provider: str) -> None:
    from rich.table import Table

    table = Table(title=f"cosine similarity ({provider})")
    table.add_column("video")
    for t in texts:
        table.add_column(t, justify="right")
    for v, row in zip(videos, scores):
        best = row.argmax()
        table.add_row(str(v), *[f"[bold]{s:.3f}[/bold]" if i == best else f"{s:.3f}" for i, s in enumerate(row)])
    Console().print(table)


@recipe_app.command("validate")
def recipe_validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML to check.")],
    set_: SetOpt = [],
    show: Annotated[bool, typer.Option(help="Print the resolved recipe.")] = False,
):
    """Check a recipe (and overrides) without loading any model."""
    from toolchain.recipe import dump_recipe, load_recipe

    cfg = load_recipe(recipe, set_)
    if show:
        typer.echo(dump_recipe(cfg))
    typer.echo(f"{recipe}: ok ({cfg.adapters.quantization} base, LoRA rank {cfg.adapters.rank}, K={cfg.frames.k})")


@adapters_app.command("plan")
def adapters_plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML whose adapters section to plan.")],
    set_: SetOpt = [],
    layers: Annotated[bool, typer.Option("--layers", help="Also list every layer with its rank.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print ranks.json's content instead of tables.")] = False,
):
    """Show module groups, their linear layers and the rank allocation finetune would use."""
    from toolchain.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    require_train_extra()
    from toolchain.adapters.ranks import group_table, layer_table, plan_table
    from toolchain.train import plan_recipe

    plan = plan_recipe(cfg, reporter(quiet=as_json))
    if as_json:
        typer.echo(json.dumps(plan.to_json(), indent=2))
        return
    typer.echo(group_table(plan))
    typer.echo("")
    typer.echo(plan_table(plan))
    if layers:
        typer.echo("")
        typer.echo(layer_table(plan))


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for videos/, train.jsonl and eval.jsonl.")],
    videos: Annotated[int, typer.Option(help="Number of training clips (eval is one clip per caption: 48).")] = 192,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed renders the same clips.")] = 0,
):
    """Render the synthetic shapes dataset as real video files (PyAV) plus JSONL captions."""
    from toolchain.data.synth import synthesize

    with reporter().task("rendering videos", None) as t:
        summary = synthesize(out_dir, videos=videos, seed=seed, progress=t.progress)
    typer.echo(f"wrote {summary['train']} train and {summary['eval']} eval clips to {out_dir}")


@data_app.command("cache")
def data_cache(
    folder: Annotated[Optional[Path], typer.Argument(
        help="Cache folder (a recipe's data.cache_dir); default $VQTOOL_CACHE_DIR or ~/.cache/vqtool/frames.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the cached frames (only the cache's own files).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --clear.")] = False,
):
    """Show the decoded-frame cache's size, or clear it (a cleared video is decoded again when needed)."""
    from toolchain.data.cache import cache_entries, clear_cache, default_cache_dir

    folder = folder or default_cache_dir()
    files = cache_entries(folder)
    size = sum(f.stat().st_size for f in files)
    typer.echo(f"frame cache {folder}: {len(files)} entries, {size / 1e9:.2f} GB")
    if not clear or not files:
        return
    if not yes and not typer.confirm(f"remove {len(files)} cached entries ({size / 1e9:.2f} GB)?"):
        raise typer.Exit(1)
    n, freed = clear_cache(folder)
    typer.echo(f"removed {n} entries, {freed / 1e9:.2f} GB")


@base_app.command("dual-encoder")
def base_dual_encoder(
    vision: Annotated[Path, typer.Argument(help="Local vision checkpoint (e.g. a CLIP or ViT model folder).")],
    text: Annotated[Path, typer.Argument(help="Local text checkpoint with tokenizer.json (e.g. a BERT folder).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the composed base; use it as model.name_or_path.")],
    projection_dim: Annotated[int, typer.Option(help="Size of the shared embedding space.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the new projection layers.")] = 0,
    force: ForceOpt = False,
):
    """Compose a VisionTextDualEncoderModel (model.family: dual-encoder) and save it with its tokenizer."""
    require_train_extra()
    from toolchain import rundir
    from toolchain.models.families import compose_dual_encoder

    rundir.check_target(out_dir, force)
    with rundir.building(out_dir) as tmp:
        compose_dual_encoder(vision, text, tmp, projection_dim=projection_dim, seed=seed)
    typer.echo(f"wrote {out_dir}; fine-tune it with model.family: dual-encoder, model.name_or_path: {out_dir}")


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@bench_app.command("frames")
def bench_frames(
    recipe: Annotated[Path, typer.Argument(help="Recipe the accuracy runs start from.")] = Path("recipes/shapes-tiny.yaml"),
    ks: Annotated[str, typer.Option(help="Frame budgets K, comma list.")] = "2,4,8,16",
    selectors: Annotated[str, typer.Option(help="Selectors to compare.")] = "uniform,motion,motion-uniform",
    steps: Annotated[int, typer.Option(help="Fine-tuning steps per accuracy cell.")] = 200,
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
    require_train_extra()
    from toolchain.bench.frames import accuracy_rows, latency_rows, markdown

    k_list = [int(k) for k in csv_list(ks)]
    shape = tuple(int(x) for x in clip.lower().split("x"))
    report = reporter()
    acc = accuracy_rows(str(recipe), list(set_), csv_list(selectors), k_list, steps, report) if accuracy else []
    lat = latency_rows(arch, k_list, "motion", threads, runs, shape, report) if latency else []
    table = markdown(acc, lat, shape, threads)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "frames.md").write_text(table)
        (out / "frames.json").write_text(json.dumps({"accuracy": acc, "latency": lat}, indent=2) + "\n")
    typer.echo(json.dumps({"accuracy": acc, "latency": lat}) if as_json else table)


@bench_app.command("memory")
def bench_memory(
    arch: Annotated[str, typer.Option(help="tiny, or clip-vit-b32 (built from its config, random weights).")] = "clip-vit-b32",
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
    from toolchain.bench.memory import check_methods, markdown, run_memory_bench

    check_methods(csv_list(methods))  # before the heavy imports
    require_train_extra()

    result = run_memory_bench(arch, frames, batch, steps, rank, csv_list(methods), reporter(), grad_checkpointing)
    table = markdown(result)
    if out:
        from toolchain.rundir import write_json, write_text

        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "memory.md", table)
        write_json(out / "memory.json", result)
    typer.echo(json.dumps(result) if as_json else table)


@app.command()
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
    out: Annotated[Optional[Path], typer.Option(help="Also write latency.md and latency.json here (DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Video encoder latency of every export variant vs PyTorch eager fp32, with cosine and file size."""
    require_train_extra()
    from export.quantize import SUPPORTED
    from toolchain.bench.latency import bench_video, markdown

    chosen = [v for v in csv_list(variants) if v != "fp32"]
    bad = [v for v in chosen if v not in SUPPORTED]
    if bad:
        raise VqtoolError(f"--variants: {', '.join(bad)} not known; choose from {', '.join(SUPPORTED)}")
    if exporter not in ("dynamo", "torchscript"):
        raise VqtoolError(f"--exporter {exporter!r} not known; choose dynamo or torchscript")
    result = bench_video(arch, frames, size, threads, runs, chosen, exporter, int8_sweep, reporter())
    table = markdown(result)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.md").write_text(table)
        (out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result) if as_json else table)


def main() -> None:
    try:
        app()
    except VqtoolError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted (a fine-tune continues from its newest checkpoint with `vqtool finetune ... --resume`)",
                  highlight=False, markup=False)
        sys.exit(130)
