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
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout, trainable_parameters
from toolchain.data.cache import FrameCache, default_cache_dir
from toolchain.data.clips import ClipSet, caption_targets, load_clips, load_line
from toolchain.data.formats import read_split, skip_summary
from toolchain.data.prepare import ensure_data
from toolchain.data.synth import appearance
from toolchain.evaluate import retrieval_metrics
from toolchain.errors import RecipeError
from toolchain.models.build import BaseInfo, base_info, load_base
from toolchain.models.pooling import build_pooling, save_pooling
from toolchain.models.video_clip import VideoCLIP
from toolchain.progress import Reporter
from toolchain.recipe import Recipe, TrainSection, dump_recipe


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


def build_trainable(recipe: Recipe, info: BaseInfo, device: str) -> VideoCLIP:
    """The model as trained: quantized frozen base (per recipe) plus LoRA adapters (and pooling)."""
    clip = load_base(info, bnb_config(recipe.adapters), device)
    keep_training_layout(clip)
    model = build_video_model(recipe, info, add_lora(clip, recipe.adapters))
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
def embed_set(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one embedding per video, one per caption)."""
    model.eval()
    dev = ids.device
    n = len(clips.videos)
    vids = [model.encode_pixels(clips.video_pixels[i : i + batch].to(dev), clips.video_motion[i : i + batch].to(dev))
            for i in range(0, n, batch)]
    txts = [model.encode_text(ids[i : i + batch], mask[i : i + batch]) for i in range(0, len(ids), batch)]
    return torch.cat(vids).cpu(), torch.cat(txts).cpu()


def evaluate_model(model: VideoCLIP, clips: ClipSet, ids, mask, batch: int) -> dict:
    video, text = embed_set(model, clips, ids, mask, batch)
    groups = [appearance(c) for c in clips.captions]
    return retrieval_metrics((text @ video.T).numpy(), groups if None not in groups else None, clips.video_of.numpy())


def frame_cache(recipe: Recipe) -> FrameCache:
    if not recipe.data.cache:
        return FrameCache(None)
    return FrameCache(Path(recipe.data.cache_dir).expanduser() if recipe.data.cache_dir else default_cache_dir())


def read_splits(recipe: Recipe, report: Reporter) -> dict:
    """Both splits' (video, caption) pairs, read before any model loads so a data mistake fails fast;
    what was skipped is reported with the first few examples."""
    ensure_data(recipe.data, report)
    splits = {}
    for which in ("train", "eval"):
        splits[which] = read_split(recipe.data, which)
        if (line := skip_summary(which, splits[which])) is not None:
            report.warn(line)
    return splits


def load_data(recipe: Recipe, splits: dict, prepare, report: Reporter) -> tuple[ClipSet, ClipSet]:
    """Decode both splits through the frame cache and prepare their frames; prints the data-loading
    benchmark line (clips/s, cache hits and misses) per split."""
    cache, out = frame_cache(recipe), []
    for which in ("train", "eval"):
        split = splits[which]
        with report.task(f"decoding {which} videos", None) as adv:
            clips = load_clips(split, prepare, recipe.frames.decode_max_frames, cache, adv.progress)
        report.skipped(clips.skipped[len(split.skipped):])
        report.say(load_line(which, clips))
        out.append(clips)
    return out[0], out[1]


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
    splits = read_splits(recipe, report)
    info, device = model_info(recipe), pick_device()
    model = build_trainable(recipe, info, device)
    n_train, n_total = trainable_parameters(model)
    report.say(f"base {recipe.model.name_or_path}: {n_total:,} parameters, {n_train:,} trainable "
               f"({100 * n_train / n_total:.2f}%), quantization {recipe.adapters.quantization}, device {device}")
    train, evalset = load_data(recipe, splits, model.prepare_frames, report)
    tr_ids, tr_mask = tokenize(info, train.captions, device)
    ev_ids, ev_mask = tokenize(info, evalset.captions, device)
    with rundir.building(run_dir) as tmp:
        rundir.write_text(tmp / "recipe.yaml", dump_recipe(resolved(recipe)))
        base = evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size)
        t0 = time.perf_counter()
        steps = train_loop(model, train, tr_ids, tr_mask, recipe.train, tmp / "metrics.jsonl", report)
        train_s = time.perf_counter() - t0
        tuned = evaluate_model(model, evalset, ev_ids, ev_mask, recipe.eval.batch_size)
        save_adapter(model, recipe, tmp / "adapter")
        result = {
            "base": base, "finetuned": tuned, "eval_clips": len(evalset.videos), "eval_captions": len(evalset.captions),
            "train_clips": len(train.videos), "train_captions": len(train.captions), "steps": steps, "train_seconds": round(train_s, 2),
            "trainable_params": n_train, "total_params": n_total,
            "skipped": [{"video": v, "reason": r} for v, r in train.skipped + evalset.skipped],
        }
        rundir.write_json(tmp / "eval.json", result)
    return result


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
