"""Retrieval (dual encoders): symmetric contrastive loss over the batch, R@K both ways on the eval split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from export.tokenize import encode_texts, load_tokenizer
from toolchain.data.batches import batches as pixel_batches
from toolchain.data.clips import ClipSet, caption_targets
from toolchain.data.synth import appearance
from toolchain.evaluate import retrieval_metrics
from toolchain.models.build import BaseInfo
from toolchain.models.video_clip import VideoCLIP
from toolchain.tasks.task import Task


@dataclass
class RetrievalData:
    clips: ClipSet
    ids: torch.Tensor  # [captions, max_text_len]
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.clips.captions)


def tokenize(info: BaseInfo, captions: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def prepare(recipe, info: BaseInfo, model, clips: ClipSet, device: str) -> RetrievalData:
    return RetrievalData(clips, *tokenize(info, clips.captions, device))


def batches(data: RetrievalData, stream, dev):
    """(pixels, motion, ids, mask, captions) per batch of pair indices."""
    for idx, pixels, motion in pixel_batches(data.clips, stream, dev):
        caps = [data.clips.captions[i] for i in idx.tolist()]
        yield pixels, motion, data.ids[idx], data.mask[idx], caps


def contrastive_loss(model: VideoCLIP, pixels, motion, ids, mask, captions: list[str]) -> torch.Tensor:
    video = model.encode_pixels(pixels, motion)
    text = model.encode_text(ids, mask)
    logits = model.logit_scale() * video @ text.T
    target = caption_targets(captions).to(logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


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


def evaluate(model: VideoCLIP, data: RetrievalData, recipe) -> dict:
    clips = data.clips
    video, text = embed_set(model, clips, data.ids, data.mask, recipe.eval.batch_size)
    groups = [appearance(c) for c in clips.captions]
    return retrieval_metrics((text @ video.T).numpy(), groups if None not in groups else None, clips.video_of.numpy())


def summary(result: dict) -> list[str]:
    b, f = result["base"]["t2v"], result["finetuned"]["t2v"]
    lines = [f"t2v R@1 on {result['eval_clips']} eval clips: base {b['r1']:.1f} -> fine-tuned {f['r1']:.1f}"]
    within = result["base"].get("t2v_within_group_r1"), result["finetuned"].get("t2v_within_group_r1")
    if None not in within:
        lines.append(f"direction R@1 (same colour and shape, chance 25): base {within[0]:.1f} -> fine-tuned {within[1]:.1f}")
    return lines


TASK = Task("retrieval", prepare, batches, contrastive_loss, evaluate, summary)
