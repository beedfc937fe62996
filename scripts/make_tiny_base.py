"""Reproducibly pretrain the built-in `tiny-video-clip` base on single static frames of the shapes.

It learns appearance (colour and shape) from captions like "a red circle" and never sees motion, so
fine-tuning has something to teach. The defaults build the shipped base: still frames of the wide
synthetic distribution (random size, background, noise, colour jitter, proportions; issue 15), 4
frames of each colour-shape pair per step, 3,000 steps. `--variety plain --per-pair 1 --steps 1500`
builds the earlier base, which only knew the plain renderer's frames.
Run: python scripts/make_tiny_base.py [--steps 3000] [--seed 0] [--variety wide|plain] [--per-pair 4]
Writes toolchain/models/tiny_video_clip/{config.json, model.safetensors, tokenizer.json}; then rerun
scripts/make_tiny_video_llm.py, whose vision tower is this one.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from export.tokenize import encode_texts, load_tokenizer
from toolchain.data.synth import COLORS, SHAPES, blank_frame, draw_shape
from toolchain.data.synth_wide import render_wide_still
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames
from toolchain.models.tiny import BUILTIN_DIR, MAX_TEXT_LEN, build_tokenizer, tiny_clip_config

PAIRS = list(itertools.product(COLORS, SHAPES))


def random_frame(rng: np.random.Generator, color: str, shape: str, variety: str = "plain") -> torch.Tensor:
    if variety == "wide":
        return torch.from_numpy(render_wide_still(rng, shape, COLORS[color]))[None, None]
    h, w = int(rng.integers(24, 45)) * 2, int(rng.integers(32, 57)) * 2
    frame = blank_frame(h, w)
    size = max(6, min(h, w) // 4)
    cx, cy = rng.uniform(size, w - size), rng.uniform(size, h - size)
    draw_shape(frame, shape, COLORS[color], (cx, cy), size)
    return torch.from_numpy(frame)[None, None]


def batch(rng, image_size: int, variety: str, per_pair: int) -> torch.Tensor:
    """per_pair frames of every (colour, shape) pair, pair-major: row i is pair i // per_pair."""
    pix = [preprocess_frames(random_frame(rng, c, s, variety), image_size, CLIP_MEAN, CLIP_STD)
           for c, s in PAIRS for _ in range(per_pair)]
    return torch.cat(pix)[:, 0]


def pretrain(steps: int, seed: int, variety: str = "plain", per_pair: int = 1) -> tuple[CLIPModel, object]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = build_tokenizer()
    model = CLIPModel(tiny_clip_config(tok.get_vocab_size()))
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(f"{tmp}/tokenizer.json")
        ids, mask = encode_texts(load_tokenizer(f"{tmp}/tokenizer.json", MAX_TEXT_LEN), [f"a {c} {s}" for c, s in PAIRS])
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    labels = torch.arange(len(PAIRS)).repeat_interleave(per_pair)
    size = model.config.vision_config.image_size
    for step in range(steps):
        img = F.normalize(model.get_image_features(pixel_values=batch(rng, size, variety, per_pair)).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # [frames, pairs]
        # image -> text over the pairs; text -> image: each caption against every frame, its own frames
        # sharing the target mass
        own = (labels[None, :] == torch.arange(len(PAIRS))[:, None]).float() / per_pair
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, own)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(1) == labels).float().mean().item()
            print(f"step {step:5d}  loss {loss.item():.4f}  image->text acc {acc:.2f}", flush=True)
    return model, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=BUILTIN_DIR)
    ap.add_argument("--variety", choices=["plain", "wide"], default="wide", help="the still frames' distribution")
    ap.add_argument("--per-pair", type=int, default=4, help="frames of each colour-shape pair per step")
    args = ap.parse_args()
    model, tok = pretrain(args.steps, args.seed, args.variety, args.per_pair)
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=".tiny-"))
    tmp.chmod(0o755)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save(str(tmp / "tokenizer.json"))
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
