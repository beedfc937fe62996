"""Parity of a video-llm export vs PyTorch: vision features and frame indices, prefill logits, greedy
tokens (fp32: identical on every eval clip), first divergence, teacher-forced top-1 agreement and the
task metric's delta, per decoder variant; the gate's failures listed one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from export.gen_session import GenSessions
from export.generate import generate
from toolchain.data.clips import rows_by_video
from toolchain.data.formats import read_split
from toolchain.data.video import decode_video
from toolchain.errors import DataError, VideoReadError
from toolchain.models.prompt import decode_answer, prompt_ids
from toolchain.models.video_llm import greedy_generate
from toolchain.text_metrics import caption_scores, qa_accuracy, question_type


@dataclass
class GenClips:
    """The eval clips: raw frames, the prompt ids, and what the metric needs (references or answer + type)."""

    videos: list[str] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)  # captioning: every caption; qa: [answer]
    types: list[str] = field(default_factory=list)  # qa: question type


def eval_clips(recipe, tok, fmt) -> GenClips:
    """Every readable eval video once: captioning asks for its caption, qa asks its first question."""
    clips = GenClips()
    videos, rows = rows_by_video(read_split(recipe.data, "eval", recipe.task))
    for video, group in zip(videos, rows):
        try:
            frames = decode_video(video, recipe.frames.decode_max_frames)
        except VideoReadError:
            continue
        first = group[0]
        clips.videos.append(str(video))
        clips.frames.append(frames)
        clips.prompts.append(prompt_ids(tok, fmt, first.question))
        clips.references.append([s.caption for s in group] if recipe.task == "captioning" else [first.caption])
        clips.types.append(question_type(first.question, first.qtype) if first.question else "")
    if not clips.frames:
        raise DataError(f"no readable eval video in {recipe.data.eval}; the export's parity check needs some")
    return clips


def metric(task: str, clips: GenClips, answers: list[str]) -> tuple[str, float]:
    """(name, value): CIDEr-D of the captions, or QA accuracy (%) of the answers."""
    if task == "captioning":
        refs = dict(enumerate(clips.references))
        return "cider_d", float(caption_scores(refs, dict(enumerate(answers)))["cider_d"])
    return "qa_accuracy", float(qa_accuracy(answers, [r[0] for r in clips.references], clips.types)["accuracy"])


@torch.no_grad()
def torch_reference(model, clips: GenClips, fmt, max_new_tokens: int) -> dict:
    """PyTorch's video tokens, frame indices, last-position prefill logits and greedy tokens per clip."""
    out = {"features": [], "indices": [], "logits": [], "tokens": []}
    for frames, prompt in zip(clips.frames, clips.prompts):
        tokens, idx = model.encode_frames(torch.from_numpy(frames)[None])
        ids = torch.tensor([prompt])
        logits, _ = model.decode_step(model.embed(ids, tokens), torch.ones_like(ids), torch.arange(len(prompt))[None])
        out["features"].append(tokens.flatten(0, 1).float().numpy())
        out["indices"].append(idx.numpy())
        out["logits"].append(logits.numpy())
        out["tokens"].append(greedy_generate(model, tokens, [prompt], max_new_tokens, fmt.eos_token_id, fmt.pad_token_id)[0])
    return out


def vision_outputs(session, clips: GenClips) -> dict:
    feats, idx = zip(*(session.run(None, {"pixel_values": f[None]}) for f in clips.frames))
    return {"features": list(feats), "indices": list(idx)}


def vision_parity(ort_out: dict, ref: dict) -> dict:
    cos, diff = [], []
    for a, b in zip(ort_out["features"], ref["features"]):
        cos.append(float(np.min(row_cosine(a, b))))
        diff.append(float(np.abs(a - b).max()))
    same = [bool(np.array_equal(a, b)) for a, b in zip(ort_out["indices"], ref["indices"])]
    return {"min_cosine": min(cos), "mean_cosine": float(np.mean(cos)), "max_abs_diff": max(diff),
            "frame_indices_identical": all(same), "clips_with_other_indices": same.count(False)}


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def all_logits(sessions: GenSessions, ids: list[int], features: np.ndarray) -> np.ndarray:
    """Every position's logits [L, V] of one sequence in a single prefill (teacher forcing)."""
    arr = np.array([ids], np.int64)
    embeds = sessions.embed(arr, features).numpy()
    lay = sessions.layout
    feeds = {"inputs_embeds": embeds.astype(np.float32), "attention_mask": np.ones_like(arr),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feeds |= {n: np.zeros((1, lay.num_kv_heads, 0, lay.head_dim), lay.dtype) for n in lay.names}
    return sessions.decoder.run([sessions.outputs[0]], feeds)[0][0].astype(np.float32)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def decoder_parity(sessions: GenSessions, features: list[np.ndarray], ref: dict, clips: GenClips, fmt,
                   max_new_tokens: int) -> dict:
    """One decoder variant over every clip, fed the vision graph's features (as deployed)."""
    tokens, logit_diff, hits, total, divergence = [], 0.0, 0, 0, []
    for feats, prompt, ref_tokens, ref_logits in zip(features, clips.prompts, ref["tokens"], ref["logits"]):
        got = generate(sessions, prompt, feats, max_new_tokens, eos_ids=[fmt.eos_token_id], pad_id=fmt.pad_token_id,
                       video_token_id=fmt.video_token_id)[0]
        tokens.append(got)
        divergence.append(first_divergence(got, ref_tokens))
        logits = all_logits(sessions, prompt + ref_tokens[:-1], feats) if ref_tokens else None
        if logits is not None:
            logit_diff = max(logit_diff, float(np.abs(logits[len(prompt) - 1] - ref_logits[0]).max()))
            pred = logits[len(prompt) - 1:].argmax(-1)
            hits += int((pred == np.array(ref_tokens)).sum())
            total += len(ref_tokens)
    diverging = [d for d in divergence if d is not None]
    return {"tokens": tokens, "clips": len(tokens), "identical_clips": divergence.count(None),
            "identical_percent": 100.0 * divergence.count(None) / len(tokens),
            "first_divergence": {"clips_diverging": len(diverging), "earliest": min(diverging) if diverging else None,
                                 "median": float(np.median(diverging)) if diverging else None},
            "teacher_forced_top1": 100.0 * hits / max(total, 1), "prefill_logits_max_abs_diff": logit_diff}


def texts(tok, fmt, token_lists: list[list[int]]) -> list[str]:
    return [decode_answer(tok, t, fmt.eos_token_id) for t in token_lists]


def gate_failures(parity: dict, recipe) -> list[str]:
    """Every failed check, in words (empty: the export passes)."""
    fails = []
    vis = parity["vision"]
    need = recipe.export.gate(vis["variant"]).min_cosine
    if not vis["frame_indices_identical"]:
        fails.append(f"vision ({vis['variant']}): frame indices differ from PyTorch's on {vis['clips_with_other_indices']} clip(s)")
    if vis["min_cosine"] < need:
        fails.append(f"vision ({vis['variant']}): feature cosine {vis['min_cosine']:.6f} < {need} (export.parity.{vis['variant']}.min_cosine)")
    for name, row in parity["variants"].items():
        gate = recipe.export.gen_gate(name)
        if name == "fp32" and row["identical_clips"] != row["clips"]:
            fails.append(f"fp32: greedy tokens differ from PyTorch's on {row['clips'] - row['identical_clips']} of "
                         f"{row['clips']} eval clips (first at token {row['first_divergence']['earliest']})")
        if row["teacher_forced_top1"] < gate.min_top1:
            fails.append(f"{name}: teacher-forced top-1 agreement {row['teacher_forced_top1']:.1f}% < {gate.min_top1}% "
                         f"(export.gen_parity.{name}.min_top1)")
        if row["metric_drop"] > gate.max_metric_drop:
            fails.append(f"{name}: {parity['metric']} drops {row['metric_drop']:.2f} points vs PyTorch > "
                         f"{gate.max_metric_drop} (export.gen_parity.{name}.max_metric_drop)")
    return fails


def parity_markdown(parity: dict) -> str:
    vis = parity["vision"]
    lines = [f"# Parity: {parity['name']} ({parity['task']}, {parity['clips']} eval clips)", "",
             f"**{'PASSED' if parity['passed'] else 'FAILED'}**", "",
             f"vision.onnx ({vis['variant']}): min cosine {vis['min_cosine']:.6f}, max abs diff {vis['max_abs_diff']:.2e}, "
             f"frame indices identical: {vis['frame_indices_identical']}", "",
             f"PyTorch {parity['metric']}: {parity['torch_metric']:.2f}", "",
             "| decoder | file MB | identical greedy clips | earliest divergence | teacher-forced top-1 % | "
             f"prefill logits max abs | {parity['metric']} | drop |", "|---|---|---|---|---|---|---|---|"]
    for name, r in parity["variants"].items():
        lines.append(f"| {name} | {r['file_mb']:.2f} | {r['identical_clips']}/{r['clips']} | "
                     f"{r['first_divergence']['earliest']} | {r['teacher_forced_top1']:.1f} | "
                     f"{r['prefill_logits_max_abs_diff']:.2e} | {r['metric']:.2f} | {r['metric_drop']:.2f} |")
    if parity["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in parity["failures"]]
    return "\n".join(lines) + "\n"
