"""Retrieval (dual encoders): symmetric contrastive loss over the batch, R@K both ways on the eval split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from export.tokenize import encode_texts, load_tokenizer
from toolchain.data.batches import batches as pixel_batches
from toolchain.data.clips import ClipSet, caption_targets
from toolchain.data.synth import appearance, reversed_caption
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
    video, context = model.encode_video_parts(pixels, motion)
    logits = model.logit_scale() * model.scores(video, context, model.encode_text_features(ids, mask))
    target = caption_targets(captions).to(logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


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


def evaluate(model: VideoCLIP, data: RetrievalData, recipe) -> dict:
    clips = data.clips
    video, context, text = embed_parts(model, clips, data.ids, data.mask, recipe.eval.batch_size)
    with torch.no_grad():  # [captions, videos]; X-CLIP's captions conditioned on each video
        sim = F.normalize(text, dim=-1) @ video.T if context is None else model.scores(video, context, text).T
    groups = [appearance(c) for c in clips.captions]
    index = {c: i for i, c in enumerate(clips.captions)}
    rival = [index.get(reversed_caption(c) or "", -1) for c in clips.captions]
    return retrieval_metrics(sim.cpu().numpy(), groups if None not in groups else None, clips.video_of.numpy(), rival)


def summary(result: dict) -> list[str]:
    b, f = result["base"]["t2v"], result["finetuned"]["t2v"]
    lines = [f"t2v R@1 on {result['eval_clips']} eval clips: base {b['r1']:.1f} -> fine-tuned {f['r1']:.1f}"]
    within = result["base"].get("t2v_within_group_r1"), result["finetuned"].get("t2v_within_group_r1")
    if None not in within:
        lines.append(f"direction R@1 (same colour and shape, chance 25): base {within[0]:.1f} -> fine-tuned {within[1]:.1f}")
    for key, what in (("v2t_group_r1", "colour + shape of the top caption"),
                      ("reversed_caption_acc", "own caption over its reversed one, chance 50")):
        pair = result["base"].get(key), result["finetuned"].get(key)
        if None not in pair:
            lines.append(f"{what}: base {pair[0]:.1f} -> fine-tuned {pair[1]:.1f}")
    return lines


def batch_keys(data: RetrievalData) -> list[str]:
    return data.clips.captions


TASK = Task("retrieval", prepare, batches, contrastive_loss, evaluate, summary, batch_keys=batch_keys)
