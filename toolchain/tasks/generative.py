"""Captioning and video QA (video-llm): causal-LM loss on the answer tokens only, greedy decoding in eval.

A training example is the recipe's prompt (generation.prompt, the video's placeholder tokens at
{video}, the question at {question}) followed by the caption or answer and EOS; the prompt and the
video positions carry no label (toolchain/models/prompt.py). Eval decodes greedily up to
generation.max_new_tokens: captioning scores each eval video's caption against all its references
(BLEU-4, CIDEr-D, ROUGE-L; on the shapes set also how often the direction is named right), QA scores
each question by normalised exact match, overall and per question type.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from toolchain.data.batches import batches as pixel_batches
from toolchain.data.clips import ClipSet
from toolchain.models.prompt import IGNORE, PromptFormat, decode_answer, pad_right, prompt_ids, training_example
from toolchain.models.video_llm import VideoLLM, greedy_generate
from toolchain.tasks.task import Task
from toolchain.text_metrics import caption_scores, direction_accuracy, qa_accuracy, question_type
from toolchain.time_reversal import reversed_rows, symmetric_pairs


@dataclass
class GenerativeData:
    clips: ClipSet
    tok: Tokenizer
    fmt: PromptFormat
    examples: list[tuple[list[int], list[int]]]  # per pair: (ids, labels); then the reversed copies'
    reversed_from: list[int] = field(default_factory=list)  # example len(pairs) + j plays pair reversed_from[j] backwards

    def __len__(self) -> int:
        return len(self.examples)


def prepare(recipe, info, model: VideoLLM, clips: ClipSet, device: str) -> GenerativeData:
    tok = Tokenizer.from_file(str(info.tokenizer))
    fmt = model.prompt_format(recipe.generation.template(recipe.task))
    examples = [training_example(tok, fmt, answer, question) for answer, question in zip(clips.captions, clips.questions)]
    return GenerativeData(clips, tok, fmt, examples)


def augment(recipe, data: GenerativeData) -> GenerativeData:
    """The training examples plus, with train.time_reversal, each pair-word row reversed (toolchain/time_reversal.py)."""
    pairs = symmetric_pairs(recipe.train.time_reversal or {})
    rows = reversed_rows(data.clips.captions, data.clips.questions, pairs)
    extra = [training_example(data.tok, data.fmt, answer, question) for _, answer, question in rows]
    return replace(data, examples=data.examples + extra, reversed_from=[i for i, _, _ in rows])


def batches(data: GenerativeData, stream, dev):
    """(pixels, motion, ids, attention mask, labels) per batch of example indices, padded to the batch's
    longest; a reversed example's frames and motion are its source pair's, in reverse order."""
    n, asked = len(data.clips.captions), deque()

    def sources(stream):
        for idx in stream:
            asked.append(idx)
            yield torch.tensor([i if i < n else data.reversed_from[i - n] for i in idx.tolist()])

    for _, pixels, motion in pixel_batches(data.clips, sources(stream), dev):
        idx = asked.popleft()
        back = (idx >= n).to(pixels.device)
        if back.any():
            pixels = torch.where(back[:, None, None, None, None], pixels.flip(1), pixels)
            motion = torch.where(back[:, None], motion.flip(1), motion)
        rows = [data.examples[i] for i in idx.tolist()]
        ids, mask, labels = pad_right([r[0] for r in rows], [r[1] for r in rows], data.fmt.pad_token_id)
        yield pixels, motion, *(torch.from_numpy(a).to(dev) for a in (ids, mask, labels))


def lm_loss(model: VideoLLM, pixels, motion, ids, mask, labels) -> torch.Tensor:
    """Mean cross-entropy of the next token over the labelled (answer and EOS) positions."""
    logits = model.logits(ids, mask, model.video_tokens(pixels, motion))
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


@torch.no_grad()
def answer_all(model: VideoLLM, data: GenerativeData, pixels, motion, prompts: list[list[int]], recipe) -> list[str]:
    """Greedy answers for prompts[i] on the video at pixels[i] / motion[i] (a tensor or a streamed view)."""
    model.eval()
    dev = next(model.parameters()).device
    batch, out = recipe.eval.batch_size, []
    for start in range(0, len(prompts), batch):
        idx = torch.arange(start, min(len(prompts), start + batch))
        tokens = model.video_tokens(pixels[idx].to(dev), motion[idx].to(dev))
        ids = greedy_generate(model, tokens, prompts[start : start + batch], recipe.generation.max_new_tokens,
                              data.fmt.eos_token_id, data.fmt.pad_token_id)
        out += [decode_answer(data.tok, x, data.fmt.eos_token_id) for x in ids]
    return out


def evaluate_captions(model: VideoLLM, data: GenerativeData, recipe) -> dict:
    clips = data.clips
    prompt = prompt_ids(data.tok, data.fmt)
    hyps = answer_all(model, data, clips.video_pixels, clips.video_motion, [prompt] * len(clips.videos), recipe)
    refs = {v: [] for v in range(len(clips.videos))}
    for caption, v in zip(clips.captions, clips.video_of.tolist()):
        refs[v].append(caption)
    scores = caption_scores(refs, dict(enumerate(hyps)))
    return {**scores, "direction_accuracy": direction_accuracy(refs, dict(enumerate(hyps))),
            "videos": len(clips.videos), "captions": len(clips.captions),
            "predictions": [{"video": str(clips.videos[v]), "caption": hyps[v], "references": refs[v]} for v in refs]}


def evaluate_answers(model: VideoLLM, data: GenerativeData, recipe) -> dict:
    clips = data.clips
    prompts = [prompt_ids(data.tok, data.fmt, q) for q in clips.questions]
    preds = answer_all(model, data, clips.pixels, clips.motion, prompts, recipe)
    types = [question_type(q, t) for q, t in zip(clips.questions, clips.qtypes)]
    result = qa_accuracy(preds, clips.captions, types)
    rows = zip(clips.video_of.tolist(), clips.questions, clips.captions, preds, types)
    result["predictions"] = [{"video": str(clips.videos[v]), "question": q, "answer": a, "predicted": p, "type": t}
                             for v, q, a, p, t in rows]
    return {**result, "videos": len(clips.videos)}


def caption_summary(result: dict) -> list[str]:
    b, f = result["base"], result["finetuned"]
    lines = [f"CIDEr-D on {result['eval_clips']} eval clips: base {b['cider_d']:.1f} -> fine-tuned {f['cider_d']:.1f} "
             f"(BLEU-4 {b['bleu4']:.1f} -> {f['bleu4']:.1f}, ROUGE-L {b['rouge_l']:.1f} -> {f['rouge_l']:.1f})"]
    if b.get("direction_accuracy") is not None:
        lines.append(f"captions naming the right direction: base {b['direction_accuracy']:.1f}% -> fine-tuned "
                     f"{f['direction_accuracy']:.1f}%")
    example = f["predictions"][0]
    lines.append(f"e.g. {example['video']}: {example['caption']!r} (reference {example['references'][0]!r})")
    return lines


def qa_summary(result: dict) -> list[str]:
    b, f = result["base"], result["finetuned"]
    lines = [f"QA accuracy on {f['questions']} questions: base {b['accuracy']:.1f}% -> fine-tuned {f['accuracy']:.1f}%"]
    for t, row in f["by_type"].items():
        lines.append(f"  {t}: base {b['by_type'].get(t, {}).get('accuracy', 0.0):.1f}% -> fine-tuned "
                     f"{row['accuracy']:.1f}% ({row['questions']} questions)")
    return lines


CAPTIONING = Task("captioning", prepare, batches, lm_loss, evaluate_captions, caption_summary, augment)
QA = Task("qa", prepare, batches, lm_loss, evaluate_answers, qa_summary, augment)
