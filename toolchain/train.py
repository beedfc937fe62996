"""Fine-tuning, top to bottom: data -> 4-bit base + LoRA -> contrastive training -> eval -> run dir."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from export.tokenize import encode_texts, load_tokenizer
from toolchain import rundir
from toolchain.adapters.temporal import attach_temporal, plain_lora_view, save_temporal
from toolchain.adapters.groups import linear_layers
from toolchain.adapters.ranks import RankPlan, plan_ranks, plan_table, temporal_extra
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout, trainable_parameters
from toolchain.data.clips import ClipSet, caption_targets, load_clips
from toolchain.data.prepare import ensure_data
from toolchain.data.synth import appearance
from toolchain.evaluate import retrieval_metrics
from toolchain.models.build import BaseInfo, base_info, load_clip
from toolchain.models.video_clip import VideoCLIP
from toolchain.progress import Reporter
from toolchain.recipe import Recipe, TrainSection, dump_recipe


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_video_model(recipe: Recipe, info: BaseInfo, clip) -> VideoCLIP:
    f = recipe.frames
    return VideoCLIP(clip, f.k, f.selector, info.image_size, info.mean, info.std)


def build_trainable(recipe: Recipe, info: BaseInfo, device: str, plan: RankPlan | None = None) -> VideoCLIP:
    """The model as trained: quantized frozen base (per recipe) plus LoRA adapters (ranks per plan)."""
    clip = load_clip(info.path, bnb_config(recipe.adapters), device)
    keep_training_layout(clip)
    model = build_video_model(recipe, info, add_lora(clip, recipe.adapters, plan))
    if recipe.adapters.temporal.enabled:
        attach_temporal(model.clip, recipe.adapters.temporal, recipe.frames.k, model.temporal)
    return model


def save_adapter(model: VideoCLIP, recipe: Recipe, adapter_dir: Path) -> None:
    """PEFT's own format for plain LoRA; temporal parameters beside it in safetensors."""
    with plain_lora_view(model.clip):
        model.clip.save_pretrained(str(adapter_dir), safe_serialization=True)
    if recipe.adapters.temporal.enabled:
        save_temporal(model.clip, adapter_dir, recipe.adapters.temporal, recipe.frames.k)


def tokenize(info: BaseInfo, captions: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def embed_set(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    dev = ids.device
    vids = [model.encode_pixels(clips.pixels[i : i + batch].to(dev), clips.motion[i : i + batch].to(dev))
            for i in range(0, len(clips.captions), batch)]
    txts = [model.encode_text(ids[i : i + batch], mask[i : i + batch]) for i in range(0, len(ids), batch)]
    return torch.cat(vids).cpu(), torch.cat(txts).cpu()


def evaluate_model(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int) -> dict:
    video, text = embed_set(model, clips, ids, mask, batch)
    groups = [appearance(c) for c in clips.captions]
    return retrieval_metrics((text @ video.T).numpy(), groups if None not in groups else None)


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

        def batches():
            for _ in range(a.ranks.calibration_batches):
                idx = next(stream)
                caps = [clips.captions[i] for i in idx.tolist()]
                yield model, clips.pixels[idx].to(dev), clips.motion[idx].to(dev), ids[idx], mask[idx], caps

        with report.task("layer importance (Fisher of the probe)", a.ranks.calibration_batches) as adv:
            scores = fisher_scores(model, batches(), contrastive_loss, adv)
    return plan_ranks(a, layers, temporal_extra(layers, a.temporal, recipe.frames.k), n_total - n_train, scores)


def needs_rebuild(plan: RankPlan, rank: int) -> bool:
    return any(x.rank != rank for x in plan.layers)


def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def batch_stream(n: int, batch: int, seed: int):
    """Endless shuffled mini-batches of clip indices, reproducible from the seed."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def contrastive_loss(model: VideoCLIP, pixels, motion, ids, mask, captions: list[str]) -> torch.Tensor:
    video = model.encode_pixels(pixels, motion)
    text = model.encode_text(ids, mask)
    logits = model.logit_scale() * video @ text.T
    target = caption_targets(captions).to(logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_loop(model: VideoCLIP, clips: ClipSet, ids, mask, cfg: TrainSection, metrics_path: Path, report: Reporter):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, len(clips.captions))
    total = cfg.total_steps(max(1, len(clips.captions) // batch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total))
    stream = batch_stream(len(clips.captions), batch, cfg.seed)
    dev, t0 = ids.device, time.perf_counter()
    model.train()
    with open(metrics_path, "a") as log, report.task("fine-tuning", total) as advance:
        for step in range(1, total + 1):
            for _ in range(cfg.grad_accumulation):
                idx = next(stream)
                caps = [clips.captions[i] for i in idx.tolist()]
                loss = contrastive_loss(model, clips.pixels[idx].to(dev), clips.motion[idx].to(dev), ids[idx], mask[idx], caps)
                (loss / cfg.grad_accumulation).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % cfg.log_every == 0 or step == total:
                row = {"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0],
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                log.write(json.dumps(row) + "\n")
                log.flush()
            advance(1, f"loss {loss.item():.3f}")
    return total


def finetune(recipe: Recipe, run_dir: Path, force: bool, report: Reporter) -> dict:
    """Run the whole fine-tune and write run_dir atomically; returns eval.json's content."""
    rundir.check_target(run_dir, force)
    torch.manual_seed(recipe.train.seed)
    train_file, eval_file = ensure_data(recipe.data, report)
    info, device = base_info(recipe.model.name_or_path), pick_device()
    model = build_trainable(recipe, info, device)
    mf = recipe.frames.decode_max_frames
    with report.task("decoding train videos", None) as adv:
        train = load_clips(train_file, model.prepare_frames, mf, adv.progress)
    with report.task("decoding eval videos", None) as adv:
        evalset = load_clips(eval_file, model.prepare_frames, mf, adv.progress)
    report.skipped(train.skipped + evalset.skipped)
    tr_ids, tr_mask = tokenize(info, train.captions, device)
    ev_ids, ev_mask = tokenize(info, evalset.captions, device)
    plan = allocate_ranks(recipe, model, train, tr_ids, tr_mask, report)
    if needs_rebuild(plan, recipe.adapters.rank):
        model = None  # free the probe before building the allocated model
        torch.manual_seed(recipe.train.seed)
        model = build_trainable(recipe, info, device, plan)
    report.say(plan_table(plan))
    n_train, n_total = trainable_parameters(model)
    report.say(f"base {recipe.model.name_or_path}: {n_total:,} parameters, {n_train:,} trainable "
               f"({100 * n_train / n_total:.2f}%), quantization {recipe.adapters.quantization}, device {device}")
    with rundir.building(run_dir) as tmp:
        rundir.write_text(tmp / "recipe.yaml", dump_recipe(resolved(recipe, train_file, eval_file)))
        rundir.write_json(tmp / "ranks.json", plan.to_json())
        base = evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size)
        t0 = time.perf_counter()
        steps = train_loop(model, train, tr_ids, tr_mask, recipe.train, tmp / "metrics.jsonl", report)
        train_s = time.perf_counter() - t0
        tuned = evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size)
        save_adapter(model, recipe, tmp / "adapter")
        result = {
            "base": base, "finetuned": tuned, "eval_clips": len(evalset.captions),
            "train_clips": len(train.captions), "steps": steps, "train_seconds": round(train_s, 2),
            "trainable_params": n_train, "total_params": n_total,
            "skipped": [{"video": v, "reason": r} for v, r in train.skipped + evalset.skipped],
        }
        rundir.write_json(tmp / "eval.json", result)
    return result


def resolved(recipe: Recipe, train_file: Path, eval_file: Path) -> Recipe:
    """The recipe as run: data paths made absolute so `vqtool export RUN_DIR` needs nothing else."""
    out = recipe.model_copy(deep=True)
    out.data.train, out.data.eval = str(train_file.resolve()), str(eval_file.resolve())
    out.data.synthesize_if_missing = False
    return out


def plan_recipe(recipe: Recipe, report: Reporter) -> RankPlan:
    """`vqtool adapters plan`: the allocation finetune would use, without training.

    Uniform and manual plans need only the layer shapes; importance decodes the training set
    and runs the calibration batches through the quantized probe, exactly as finetune does.
    """
    info, device = base_info(recipe.model.name_or_path), pick_device()
    torch.manual_seed(recipe.train.seed)
    model = build_trainable(recipe, info, device)
    if recipe.adapters.ranks.strategy != "importance":
        return allocate_ranks(recipe, model, None, None, None, report)
    train_file, _ = ensure_data(recipe.data, report)
    with report.task("decoding train videos", None) as adv:
        train = load_clips(train_file, model.prepare_frames, recipe.frames.decode_max_frames, adv.progress)
    ids, mask = tokenize(info, train.captions, device)
    return allocate_ranks(recipe, model, train, ids, mask, report)
