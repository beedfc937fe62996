"""Fine-tuning, top to bottom: data -> 4-bit base + LoRA -> the task's training -> eval -> run dir.

The loop does not know the task: a task (toolchain/tasks: retrieval, captioning, qa) turns the loaded
splits into its examples, streams them as loss inputs, computes the loss and the eval metrics. The
model is built by toolchain/models/assemble.py.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import closing
from pathlib import Path

import torch

from toolchain import distributed, rundir
from toolchain.adapters.groups import linear_layers
from toolchain.adapters.qlora import precision_summary, trainable_parameters
from toolchain.adapters.ranks import RankPlan, plan_ranks, plan_table, temporal_extra
from toolchain.checkpoint import (check_processes, checkpoint_step, latest_checkpoint, load_checkpoint, open_work_dir,
                                  rewind_metrics, save_checkpoint)
from toolchain.data.batches import batch_stream
from toolchain.data.prepare import ensure_data
from toolchain.data.splits import frame_cache, load_data, load_split, read_splits
from toolchain.distributed import LossModule, Processes, parameters_digest, shard
from toolchain.errors import TrainingDivergedError
from toolchain.models.assemble import build_trainable, model_info, save_adapter
from toolchain.progress import Reporter
from toolchain.recipe import Recipe, TrainSection
from toolchain.tasks import TASKS
from toolchain.tasks.task import Task


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def allocate_ranks(recipe: Recipe, task: Task, model, data, report: Reporter) -> RankPlan:
    """Split the adapter budget; `model` (uniform at adapters.rank) is the probe for importance."""
    a = recipe.adapters
    layers = linear_layers(model.core, a.target_modules)
    n_train, n_total = trainable_parameters(model)
    scores = None
    if a.ranks.strategy == "importance":
        from toolchain.adapters.calibrate import fisher_scores

        batch = min(recipe.train.batch_size, len(data))
        stream = batch_stream(len(data), batch, recipe.train.seed)
        dev = next(model.parameters()).device

        def calibration():
            for _, inputs in zip(range(a.ranks.calibration_batches), task.batches(data, stream, dev)):
                yield model, *inputs

        with report.task("layer importance (Fisher of the probe)", a.ranks.calibration_batches) as adv:
            scores = fisher_scores(model, calibration(), task.loss, adv)
    return plan_ranks(a, layers, temporal_extra(layers, a.temporal, recipe.frames.k), n_total - n_train, scores)


def needs_rebuild(plan: RankPlan, rank: int) -> bool:
    return any(x.rank != rank for x in plan.layers)


def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train_loop(task: Task, model, data, cfg: TrainSection, work: Path, report: Reporter, procs: Processes) -> int:
    """AdamW + warmup/cosine over the task's examples; checkpoints into `work`, resumes from its newest
    one; returns the steps run."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, len(data))
    total = cfg.total_steps(max(1, len(data) // batch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total))
    start = resume_state(work, model, opt, sched, procs, report)
    keys = task.batch_keys(data) if cfg.batching == "spread" else None
    stream = shard(batch_stream(len(data), batch, cfg.seed, start * cfg.grad_accumulation * procs.world, keys),
                   procs.rank, procs.world)
    step_loss = procs.wrap(LossModule(model, task.loss))
    dev, t0 = next(model.parameters()).device, time.perf_counter()
    model.train()
    with (open(work / "metrics.jsonl", "a") as log, report.task("fine-tuning", total) as advance,
          closing(task.batches(data, stream, dev)) as inputs):
        advance(start)
        for step in range(start + 1, total + 1):
            summed = torch.zeros((), device=dev)
            for _ in range(cfg.grad_accumulation):
                loss = step_loss(*next(inputs))
                procs.backward(loss / cfg.grad_accumulation)
                summed += loss.detach() / cfg.grad_accumulation
            loss = procs.mean(summed)
            if not torch.isfinite(loss):
                raise diverged(step, loss.item(), work, cfg)
            clip_gradients(opt, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if procs.is_main and (step % cfg.log_every == 0 or step == total):
                row = {"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0],
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                log.write(json.dumps(row) + "\n")
                log.flush()
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == total):
                if procs.is_main:
                    save_checkpoint(work, step, model, opt, sched, {"processes": procs.world, "total": total}, cfg.keep)
                procs.wait()
            advance(1, f"loss {loss.item():.3f}")
    return total


def resume_state(work: Path, model, opt, sched, procs: Processes, report: Reporter) -> int:
    """Load the newest complete checkpoint in `work`, if any; returns its step (0: start from scratch)."""
    newest = latest_checkpoint(work)
    if newest is None:
        return 0
    state = load_checkpoint(newest, model, opt, sched)
    if procs.is_main:
        append_metrics(work, [{"event": "resumed", "from_step": state["step"]}])
    report.say(f"resuming from {newest} (step {state['step']} of {state['total']})")
    return state["step"]


def augmented(task: Task, recipe: Recipe, data, report: Reporter):
    """The task's training-time augmentation (train.time_reversal), said when it adds examples."""
    out = task.augment(recipe, data)
    if len(out) > len(data):
        report.say(f"train.time_reversal: {len(out) - len(data):,} of {len(data):,} training rows name a pair word "
                   f"and also train reversed ({len(out):,} examples)")
    return out


def clip_gradients(opt: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Scale the trainable gradients to a total L2 norm of at most max_norm (train.max_grad_norm; None: off).
    Under DDP the gradients are already all-reduced here, so every process clips the same way."""
    if max_norm is not None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def diverged(step: int, value: float, work: Path, cfg: TrainSection) -> TrainingDivergedError:
    newest = latest_checkpoint(work)
    kept = f"the last good checkpoint, {newest}, is kept" if newest else "no checkpoint was written yet"
    return TrainingDivergedError(
        f"the loss became non-finite ({value}) at step {step}; training stopped and {kept}. "
        f"Lower train.lr (now {cfg.lr:g}) or raise train.warmup_steps, then start over with --force"
    )


def append_metrics(work: Path, rows: list[dict]) -> None:
    with open(work / "metrics.jsonl", "a") as log:
        log.writelines(json.dumps(row) + "\n" for row in rows)


def finetune(recipe: Recipe, run_dir: Path, force: bool, report: Reporter, resume: bool = False,
             procs: Processes | None = None) -> dict | None:
    """Run the whole fine-tune in runs/.NAME.partial (checkpointed), then rename it to run_dir.

    Returns eval.json's content on the main process (None on the others).
    """
    procs = procs or distributed.current()
    recipe, work = prepare_run(recipe, run_dir, force, resume, report, procs)
    try:
        result = train_and_evaluate(recipe, work, report, procs)
    except BaseException:
        if procs.is_main and latest_checkpoint(work) is None:
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave no partial dir behind
        raise
    if procs.is_main:
        rundir.finish(work, run_dir)
    procs.wait()
    return result


def evaluate_model(task: Task, model, data, recipe: Recipe, procs: Processes) -> dict:
    procs.evals_run += 1
    return task.evaluate(model, data, recipe)


def train_and_evaluate(recipe: Recipe, work: Path, report: Reporter, procs: Processes) -> dict | None:
    """Model, data, base eval, training (checkpointed), final eval and adapter, all inside `work`."""
    torch.manual_seed(recipe.train.seed)
    task = TASKS[recipe.task]
    splits = read_splits(recipe, report)  # a data mistake fails before the model loads
    info, device = model_info(recipe), procs.device or pick_device()
    model = build_trainable(recipe, info, device)
    train, evalset = load_data(recipe, splits, model.preparer(), report)
    skipped = train.skipped + evalset.skipped
    train_data, eval_data = (task.prepare(recipe, info, model, clips, device) for clips in (train, evalset))
    plan = allocate_ranks(recipe, task, model, train_data, report)
    if needs_rebuild(plan, recipe.adapters.rank):
        model = None  # free the probe before building the allocated model
        torch.manual_seed(recipe.train.seed)
        model = build_trainable(recipe, info, device, plan)
    report.say(plan_table(plan))
    n_train, n_total = trainable_parameters(model)
    report.say(f"base {recipe.model.name_or_path}: {n_total - n_train:,} parameters, {n_train:,} trainable "
               f"({100 * n_train / max(1, n_total - n_train):.2f}% of the base), quantization {recipe.adapters.quantization}"
               f"{precision_summary(model.core)}, task {recipe.task}, device {device}"
               + (f", {procs.world} processes" if procs.world > 1 else ""))
    base = None
    if procs.is_main:
        rundir.write_json(work / "ranks.json", plan.to_json())
        append_metrics(work, [{"event": "skipped", "video": v, "reason": r} for v, r in skipped])
        base = base_eval(work, lambda: evaluate_model(task, model, eval_data, recipe, procs))
    t0 = time.perf_counter()
    steps = train_loop(task, model, augmented(task, recipe, train_data, report), recipe.train, work, report, procs)
    train_s = time.perf_counter() - t0
    result = None
    if procs.is_main:
        tuned = evaluate_model(task, model, eval_data, recipe, procs)
        save_adapter(model, recipe, work / "adapter")
        result = {
            "task": recipe.task, "base": base, "finetuned": tuned,
            "eval_clips": len(evalset.videos), "eval_captions": len(evalset.captions),
            "train_clips": len(train.videos), "train_captions": len(train.captions), "steps": steps, "train_seconds": round(train_s, 2),
            "trainable_params": n_train, "total_params": n_total,
            "skipped": [{"video": v, "reason": r} for v, r in skipped],
        }
    check_replicas_agree(model, work, procs)
    if procs.is_main:
        rundir.write_json(work / "eval.json", result)
    return result


def prepare_run(recipe: Recipe, run_dir: Path, force: bool, resume: bool, report: Reporter,
                procs: Processes, world: int | None = None) -> tuple[Recipe, Path]:
    """Checks and the partial dir, before any model loads; the main process goes first (it may write).

    `world`: how many processes will train (default: procs.world; the launcher checks for its workers).
    """
    rundir.check_target(run_dir, force)
    if not procs.is_main:
        procs.wait()
    ensure_data(recipe.data, report)
    recipe = resolved(recipe)
    work = open_work_dir(recipe, run_dir, force, resume or not procs.is_main)
    check_processes(work, world or procs.world)
    if procs.is_main:
        rewind_metrics(work / "metrics.jsonl", checkpoint_step(latest_checkpoint(work)))
        procs.wait()
    return recipe, work


def base_eval(work: Path, run) -> dict:
    """The base model's eval, computed once per run (a resumed run reuses it)."""
    path = work / "eval_base.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = run()
    rundir.write_json(path, result)
    return result


def check_replicas_agree(model, work: Path, procs: Processes) -> None:
    """With several processes: every replica must hold bit-identical adapters; log who evaluated."""
    if procs.world == 1:
        return
    digests = procs.gather(parameters_digest(model))
    evals = procs.gather(procs.evals_run)
    if procs.is_main:
        append_metrics(work, [{"event": "processes", "world_size": procs.world, "trainable_sha256": digests,
                               "evals_run": evals}])
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: trainable-parameter digests {digests}")


def resolved(recipe: Recipe) -> Recipe:
    """The recipe as run: data paths made absolute so `vqtool export RUN_DIR` needs nothing else."""
    out = recipe.model_copy(deep=True)
    d = out.data
    for key in ("train", "eval", "annotations", "video_root"):
        value = getattr(d, key)
        if value is not None and Path(value).exists():  # an MSR-VTT split name stays a name
            setattr(d, key, str(Path(value).resolve()))
    if Path(out.model.name_or_path).is_dir():
        out.model.name_or_path = str(Path(out.model.name_or_path).resolve())
    d.synthesize_if_missing = False
    return out


def plan_recipe(recipe: Recipe, report: Reporter) -> RankPlan:
    """`vqtool adapters plan`: the allocation finetune would use, without training.

    Uniform and manual plans need only the layer shapes; importance decodes the training set
    and runs the calibration batches through the quantized probe, exactly as finetune does.
    """
    info, device = model_info(recipe), pick_device()
    task = TASKS[recipe.task]
    torch.manual_seed(recipe.train.seed)
    model = build_trainable(recipe, info, device)
    if recipe.adapters.ranks.strategy != "importance":
        return allocate_ranks(recipe, task, model, None, report)
    split = read_splits(recipe, report)["train"]
    train = load_split(recipe, "train", split, model.preparer(), frame_cache(recipe), report)
    return allocate_ranks(recipe, task, model, task.prepare(recipe, info, model, train, device), report)
