"""Fine-tuning, top to bottom: data -> 4-bit base + LoRA -> contrastive training -> eval -> run dir."""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import closing
from pathlib import Path

import torch
import torch.nn.functional as F

from export.tokenize import encode_texts, load_tokenizer
from toolchain import distributed, rundir
from toolchain.adapters.temporal import attach_temporal, plain_lora_view, save_temporal
from toolchain.adapters.groups import linear_layers
from toolchain.adapters.ranks import RankPlan, plan_ranks, plan_table, temporal_extra
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout, trainable_parameters
from toolchain.checkpoint import (check_processes, checkpoint_step, latest_checkpoint, load_checkpoint, open_work_dir,
                                  rewind_metrics, save_checkpoint)
from toolchain.data.batches import batch_stream, batches
from toolchain.data.clips import ClipSet, caption_targets
from toolchain.data.prepare import ensure_data
from toolchain.data.splits import frame_cache, load_data, load_split, read_splits
from toolchain.data.synth import appearance
from toolchain.distributed import LossModule, Processes, parameters_digest, shard
from toolchain.errors import TrainingDivergedError
from toolchain.evaluate import retrieval_metrics
from toolchain.errors import RecipeError
from toolchain.models.build import BaseInfo, base_info, load_base
from toolchain.models.pooling import build_pooling, save_pooling
from toolchain.models.video_clip import VideoCLIP
from toolchain.progress import Reporter
from toolchain.recipe import Recipe, TrainSection


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_info(recipe: Recipe) -> BaseInfo:
    """The base's constants, checked against the recipe (family, and X-CLIP's fixed frame count)."""
    info = base_info(recipe.model.name_or_path, recipe.model.family)
    if info.num_frames is not None and info.num_frames != recipe.frames.k:
        raise RecipeError(
            f"frames.k is {recipe.frames.k}, but the xclip base {recipe.model.name_or_path} takes exactly "
            f"vision_config.num_frames = {info.num_frames} frames; set frames.k: {info.num_frames}"
        )
    return info


def embedding_dim(base) -> int:
    config = base.config if hasattr(base, "config") else base.get_base_model().config
    return int(config.projection_dim)


def build_video_model(recipe: Recipe, info: BaseInfo, clip, pool_state: dict | None = None) -> VideoCLIP:
    """Wrap a base (plain, quantized or PEFT) for video; a transformer pooling starts from pool_state."""
    f, m = recipe.frames, recipe.model
    pool = build_pooling(m.pooling, embedding_dim(clip), f.k, m.pooling_layers)
    if pool is not None:
        if pool_state is not None:
            pool.load_state_dict(pool_state)
        pool.to(next(clip.parameters()).device)
    return VideoCLIP(clip, f.k, f.selector, info.image_size, info.mean, info.std, info.family, pool,
                     info.resize_shortest, info.rescale, info.resample)


def build_trainable(recipe: Recipe, info: BaseInfo, device: str, plan: RankPlan | None = None) -> VideoCLIP:
    """The model as trained: quantized frozen base (per recipe), LoRA adapters (ranks per plan), pooling."""
    clip = load_base(info, bnb_config(recipe.adapters), device)
    keep_training_layout(clip)
    model = build_video_model(recipe, info, add_lora(clip, recipe.adapters, plan))
    if recipe.adapters.temporal.enabled:
        attach_temporal(model.clip, recipe.adapters.temporal, recipe.frames.k, model.temporal)
    return model


def save_adapter(model: VideoCLIP, recipe: Recipe, adapter_dir: Path) -> None:
    """PEFT's own format for plain LoRA; temporal and pooling parameters beside it in safetensors."""
    with plain_lora_view(model.clip):
        model.clip.save_pretrained(str(adapter_dir), safe_serialization=True)
    if recipe.adapters.temporal.enabled:
        save_temporal(model.clip, adapter_dir, recipe.adapters.temporal, recipe.frames.k)
    if model.pool is not None:
        save_pooling(model.pool, adapter_dir)


def tokenize(info: BaseInfo, captions: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def embed_parts(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int):
    """(video embeddings, their prompt contexts or None, text features): what model.scores takes."""
    model.eval()
    dev = ids.device
    n = len(clips.videos)
    vids = [model.encode_video_parts(clips.video_pixels[i : i + batch].to(dev), clips.video_motion[i : i + batch].to(dev))
            for i in range(0, n, batch)]
    txts = [model.encode_text_features(ids[i : i + batch], mask[i : i + batch]) for i in range(0, len(ids), batch)]
    context = None if vids[0][1] is None else torch.cat([c for _, c in vids])
    return torch.cat([v for v, _ in vids]), context, torch.cat(txts)


def evaluate_model(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int, procs: Processes | None = None) -> dict:
    if procs is not None:
        procs.evals_run += 1
    video, context, text = embed_parts(model, clips, ids, mask, batch)
    with torch.no_grad():  # [captions, videos]; X-CLIP's captions conditioned on each video
        sim = F.normalize(text, dim=-1) @ video.T if context is None else model.scores(video, context, text).T
    groups = [appearance(c) for c in clips.captions]
    return retrieval_metrics(sim.cpu().numpy(), groups if None not in groups else None, clips.video_of.numpy())


def allocate_ranks(recipe: Recipe, model: VideoCLIP, clips: ClipSet | None, ids, mask, report: Reporter) -> RankPlan:
    """Split the adapter budget; `model` (uniform at adapters.rank) is the probe for importance."""
    a = recipe.adapters
    layers = linear_layers(model.clip, a.target_modules)
    n_train, n_total = trainable_parameters(model)
    scores = None
    if a.ranks.strategy == "importance":
        from toolchain.adapters.calibrate import fisher_scores

        batch = min(recipe.train.batch_size, len(clips.captions))
        stream = batch_stream(len(clips.captions), batch, recipe.train.seed)
        dev = ids.device

        def calibration():
            for _, (idx, pixels, motion) in zip(range(a.ranks.calibration_batches), batches(clips, stream, dev)):
                caps = [clips.captions[i] for i in idx.tolist()]
                yield model, pixels, motion, ids[idx], mask[idx], caps

        with report.task("layer importance (Fisher of the probe)", a.ranks.calibration_batches) as adv:
            scores = fisher_scores(model, calibration(), contrastive_loss, adv)
    return plan_ranks(a, layers, temporal_extra(layers, a.temporal, recipe.frames.k), n_total - n_train, scores)


def needs_rebuild(plan: RankPlan, rank: int) -> bool:
    return any(x.rank != rank for x in plan.layers)


def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def contrastive_loss(model: VideoCLIP, pixels, motion, ids, mask, captions: list[str]) -> torch.Tensor:
    video, context = model.encode_video_parts(pixels, motion)
    logits = model.logit_scale() * model.scores(video, context, model.encode_text_features(ids, mask))
    target = caption_targets(captions).to(logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_loop(model: VideoCLIP, clips: ClipSet, ids, mask, cfg: TrainSection, work: Path, report: Reporter,
               procs: Processes) -> int:
    """AdamW + warmup/cosine; checkpoints into `work`, resumes from its newest one; returns the steps run."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, len(clips.captions))
    total = cfg.total_steps(max(1, len(clips.captions) // batch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total))
    start = resume_state(work, model, opt, sched, procs, report)
    stream = shard(batch_stream(len(clips.captions), batch, cfg.seed, start * cfg.grad_accumulation * procs.world),
                   procs.rank, procs.world)
    step_loss = procs.wrap(LossModule(model, contrastive_loss))
    dev, t0 = ids.device, time.perf_counter()
    model.train()
    with (open(work / "metrics.jsonl", "a") as log, report.task("fine-tuning", total) as advance,
          closing(batches(clips, stream, dev)) as data):
        advance(start)
        for step in range(start + 1, total + 1):
            summed = torch.zeros((), device=dev)
            for _ in range(cfg.grad_accumulation):
                idx, pixels, motion = next(data)
                caps = [clips.captions[i] for i in idx.tolist()]
                loss = step_loss(pixels, motion, ids[idx], mask[idx], caps)
                procs.backward(loss / cfg.grad_accumulation)
                summed += loss.detach() / cfg.grad_accumulation
            loss = procs.mean(summed)
            if not torch.isfinite(loss):
                raise diverged(step, loss.item(), work, cfg)
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


def train_and_evaluate(recipe: Recipe, work: Path, report: Reporter, procs: Processes) -> dict | None:
    """Model, data, base eval, training (checkpointed), final eval and adapter, all inside `work`."""
    torch.manual_seed(recipe.train.seed)
    splits = read_splits(recipe, report)  # a data mistake fails before the model loads
    info, device = model_info(recipe), procs.device or pick_device()
    model = build_trainable(recipe, info, device)
    train, evalset = load_data(recipe, splits, model.preparer(), report)
    skipped = train.skipped + evalset.skipped
    tr_ids, tr_mask = tokenize(info, train.captions, device)
    ev_ids, ev_mask = tokenize(info, evalset.captions, device)
    plan = allocate_ranks(recipe, model, train, tr_ids, tr_mask, report)
    if needs_rebuild(plan, recipe.adapters.rank):
        model = None  # free the probe before building the allocated model
        torch.manual_seed(recipe.train.seed)
        model = build_trainable(recipe, info, device, plan)
    report.say(plan_table(plan))
    n_train, n_total = trainable_parameters(model)
    report.say(f"base {recipe.model.name_or_path}: {n_total - n_train:,} parameters, {n_train:,} trainable "
               f"({100 * n_train / max(1, n_total - n_train):.2f}% of the base), quantization {recipe.adapters.quantization}, device {device}"
               + (f", {procs.world} processes" if procs.world > 1 else ""))
    base = None
    if procs.is_main:
        rundir.write_json(work / "ranks.json", plan.to_json())
        append_metrics(work, [{"event": "skipped", "video": v, "reason": r} for v, r in skipped])
        base = base_eval(work, lambda: evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size, procs))
    t0 = time.perf_counter()
    steps = train_loop(model, train, tr_ids, tr_mask, recipe.train, work, report, procs)
    train_s = time.perf_counter() - t0
    result = None
    if procs.is_main:
        tuned = evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size, procs)
        save_adapter(model, recipe, work / "adapter")
        result = {
            "base": base, "finetuned": tuned, "eval_clips": len(evalset.videos), "eval_captions": len(evalset.captions),
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


def check_replicas_agree(model: VideoCLIP, work: Path, procs: Processes) -> None:
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
    torch.manual_seed(recipe.train.seed)
    model = build_trainable(recipe, info, device)
    if recipe.adapters.ranks.strategy != "importance":
        return allocate_ranks(recipe, model, None, None, None, report)
    split = read_splits(recipe, report)["train"]
    train = load_split(recipe, "train", split, model.preparer(), frame_cache(recipe), report)
    ids, mask = tokenize(info, train.captions, device)
    return allocate_ranks(recipe, model, train, ids, mask, report)
