"""Reproducibly build the built-in `tiny-video-llm` base from the built-in `tiny-video-clip` vision tower.

The vision tower is tiny-video-clip's, unchanged (frozen here), so this base follows that one: re-run
this script after re-pretraining tiny-video-clip. A fresh projector and a 2-layer, 64-wide Llama decoder
with a word-level tokenizer are composed onto it (`vqtool base video-llm`'s code) and pretrained on
*still* frames of the shapes with appearance-only text: captions like "a red circle", the questions
"what colour is the shape ?" / "what shape is it ?", and clips cut from two stills ("a red circle then
a blue square": the first frames show one still, the rest another), which teach the decoder to read
the frames in order. Nothing ever moves, so fine-tuning has the motion words to teach. Run: python scripts/make_tiny_video_llm.py [--steps 800] [--seed 0]
(about 4 minutes on 2 CPU cores). Writes toolchain/models/tiny_video_llm/.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import LlavaOnevisionForConditionalGeneration

from toolchain.data.synth import COLORS, QUESTIONS, SHAPES, blank_frame, draw_shape
from toolchain.models.build import base_info
from toolchain.models.compose_llm import compose_video_llm, save_tiny_decoder
from toolchain.models.preprocess import preprocess_frames
from toolchain.models.prompt import pad_right, prompt_ids, training_example
from toolchain.models.tiny import BUILTIN_DIR, LLM_DIR
from toolchain.models.video_llm import VideoLLM, greedy_generate
from toolchain.recipe import DEFAULT_PROMPTS
from toolchain.tasks.generative import lm_loss

PAIRS = list(itertools.product(COLORS, SHAPES))
K = 8  # frames per (still) clip, as the shipped recipes use


def still_frame(rng: np.random.Generator, color: str, shape: str) -> np.ndarray:
    """One frame as the shapes renderer draws them: a shape of side min(H, W) / 4 inside the centred square."""
    h, w = 2 * int(rng.integers(24, 45)), 2 * int(rng.integers(32, 57))
    frame = blank_frame(h, w)
    side, size = min(h, w), min(h, w) // 4
    x0, y0 = (w - side) / 2, (h - side) / 2
    cx, cy = x0 + rng.uniform(size / 2, side - size / 2), y0 + rng.uniform(size / 2, side - size / 2)
    draw_shape(frame, shape, COLORS[color], (cx, cy), size)
    return frame


def still_pixels(model: VideoLLM, frame: np.ndarray, frames: int = K) -> torch.Tensor:
    """[frames, 3, S, S]: copies of the frame, preprocessed as fine-tuning preprocesses clips."""
    one = preprocess_frames(torch.from_numpy(frame)[None, None], model.image_size, model.mean, model.std,
                            model.resize_shortest, model.rescale, model.resample)
    return one[0].expand(frames, -1, -1, -1)


def example(model, rng_np, rng: random.Random) -> tuple[torch.Tensor, str, str, str | None]:
    """(pixels, task, answer, question): captions of one still, of two stills in a row, or a colour /
    shape question about one still."""
    kind = rng.choice(["captioning", "captioning", "sequence", "colour", "shape"])
    color, shape = PAIRS[rng.randrange(len(PAIRS))]
    pixels = still_pixels(model, still_frame(rng_np, color, shape))
    if kind == "sequence":
        other = rng.choice([p for p in PAIRS if p != (color, shape)])
        cut = rng.randrange(2, K - 1)  # at least two frames of each still
        later = still_pixels(model, still_frame(rng_np, *other), K - cut)
        return torch.cat([pixels[:cut], later]), "captioning", f"a {color} {shape} then a {other[0]} {other[1]}", None
    if kind == "captioning":
        return pixels, "captioning", f"a {color} {shape}", None
    return pixels, "qa", color if kind == "colour" else shape, QUESTIONS[kind]


def batch(model, tok, fmts, rng_np, rng, size: int):
    pixels, rows, labels = [], [], []
    for _ in range(size):
        clip, task, answer, question = example(model, rng_np, rng)
        pixels.append(clip)
        ids, lab = training_example(tok, fmts[task], answer, question)
        rows.append(ids), labels.append(lab)
    ids, mask, lab = (torch.from_numpy(a) for a in pad_right(rows, labels, fmts["qa"].pad_token_id))
    return torch.stack(pixels), torch.zeros(size, K), ids, mask, lab


@torch.no_grad()
def caption_accuracy(model, tok, fmt, rng_np) -> tuple[float, float]:
    """Shares of exact captions: the 12 colour/shape stills, and 12 two-still clips ("... then ...")."""
    model.eval()
    later = [PAIRS[(i + 5) % len(PAIRS)] for i in range(len(PAIRS))]
    stills = [still_pixels(model, still_frame(rng_np, c, s)) for c, s in PAIRS]
    pairs = [torch.cat([x[: K // 2], still_pixels(model, still_frame(rng_np, *o), K - K // 2)]) for x, o in zip(stills, later)]
    want = [f"a {c} {s}" for c, s in PAIRS] + [f"a {c} {s} then a {o[0]} {o[1]}" for (c, s), o in zip(PAIRS, later)]
    pixels = torch.stack(stills + pairs)
    tokens = model.video_tokens(pixels, torch.zeros(len(pixels), K))
    out = greedy_generate(model, tokens, [prompt_ids(tok, fmt)] * len(pixels), 10, fmt.eos_token_id, fmt.pad_token_id)
    hits = [tok.decode(x[:-1] if x and x[-1] == fmt.eos_token_id else x) == w for x, w in zip(out, want)]
    model.train()
    n = len(PAIRS)
    return sum(hits[:n]) / n, sum(hits[n:]) / n


def pretrain(model: VideoLLM, tok: Tokenizer, steps: int, seed: int, batch_size: int) -> None:
    for p in model.hf.model.vision_tower.parameters():
        p.requires_grad_(False)  # the tower stays tiny-video-clip's
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    fmts = {t: model.prompt_format(DEFAULT_PROMPTS[t]) for t in ("captioning", "qa")}
    rng_np, rng = np.random.default_rng(seed), random.Random(seed)
    model.train()
    for step in range(steps):
        loss = lm_loss(model, *batch(model, tok, fmts, rng_np, rng, batch_size))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            one, two = caption_accuracy(model, tok, fmts["captioning"], np.random.default_rng(seed + 1))
            print(f"step {step:5d}  loss {loss.item():.4f}  exact captions: stills {one:.2f}, two stills {two:.2f}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vision", type=Path, default=BUILTIN_DIR, help="vision tower (default: tiny-video-clip)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=LLM_DIR)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=".tiny-llm-"))
    tmp.chmod(0o755)
    try:
        parts = tmp / "parts"
        base = compose_video_llm(args.vision, save_tiny_decoder(parts / "decoder", args.seed), tmp / "model", args.seed)
        info = base_info(str(base), "video-llm")
        vlm = LlavaOnevisionForConditionalGeneration.from_pretrained(str(base))
        model = VideoLLM(vlm, K, "uniform", info.image_size, info.mean, info.std, info.resize_shortest,
                         info.rescale, info.resample)
        pretrain(model, Tokenizer.from_file(str(info.tokenizer)), args.steps, args.seed, args.batch)
        vlm.save_pretrained(str(base), safe_serialization=True)
        meta = {"vision": str(args.vision.name), "vision_sha256": sha256(args.vision / "model.safetensors"),
                "steps": args.steps, "batch": args.batch, "seed": args.seed, "frames": K}
        (base / "vqtool_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in base.iterdir():
            f.chmod(0o644)  # safetensors writes 0600; the package's files read like any other
        if args.out.exists():
            shutil.rmtree(args.out)
        base.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
