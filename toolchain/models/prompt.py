"""A video-llm's prompts as token ids, without torch: training, eval and a torch-free runtime build them alike.

A template is text with `{video}` (where the video's tokens go) and, for qa, `{question}`. The text
around `{video}` is tokenized as written (`add_special_tokens=False`, so a chat model's markers written
in the template become its special tokens) and `{video}` becomes `video_tokens` copies of the video
token id, whose embeddings the model replaces by the projected vision tokens (`merge_video_tokens` in
video_llm.py). No BOS is added: a template that wants one writes it. A training example is the prompt,
then the answer's tokens (tokenized after a space, as they follow the prompt) and the end-of-text
token; only those last are labelled, the prompt and the video tokens are IGNORE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from tokenizers import Tokenizer

IGNORE = -100  # the label of a position the loss skips (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class PromptFormat:
    """Everything besides the tokenizer that turns (question, answer) into ids."""

    template: str
    video_token_id: int
    video_tokens: int  # placeholders per video: K frames x pooled patches, + 1 newline token
    eos_token_id: int
    pad_token_id: int

    def to_json(self) -> dict:
        return asdict(self)


def video_token_count(image_size: int, patch_size: int, k: int) -> int:
    """LLaVA-OneVision's video tokens for K frames: each frame's patch grid pooled 2x2 (bilinear, ceil),
    then one image_newline token after the last frame."""
    side = math.ceil((image_size // patch_size) / 2)
    return k * side * side + 1


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids if text else []


def prompt_ids(tok: Tokenizer, fmt: PromptFormat, question: str | None = None) -> list[int]:
    """The template with the question filled in and `video_tokens` placeholders at {video}."""
    before, after = fmt.template.split("{video}", 1)
    q = (question or "").strip()
    before, after = before.replace("{question}", q), after.replace("{question}", q)
    return encode(tok, before) + [fmt.video_token_id] * fmt.video_tokens + encode(tok, after)


def answer_ids(tok: Tokenizer, fmt: PromptFormat, answer: str) -> list[int]:
    return encode(tok, " " + answer.strip()) + [fmt.eos_token_id]


def training_example(tok: Tokenizer, fmt: PromptFormat, answer: str, question: str | None = None,
                     max_answer_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are IGNORE over the prompt, the answer's ids and EOS after it."""
    prompt = prompt_ids(tok, fmt, question)
    target = answer_ids(tok, fmt, answer)
    if max_answer_tokens is not None and len(target) > max_answer_tokens:
        target = target[: max_answer_tokens - 1] + [fmt.eos_token_id]
    return prompt + target, [IGNORE] * len(prompt) + target


def pad_right(rows: list[list[int]], labels: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training batches: (ids, attention mask, labels) int64 [N, L], padded at the end (labels IGNORE)."""
    n, length = len(rows), max(len(r) for r in rows)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    lab = np.full((n, length), IGNORE, dtype=np.int64)
    for i, (r, y) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], mask[i, : len(r)], lab[i, : len(y)] = r, 1, y
    return ids, mask, lab


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Generation batches: (ids, attention mask) int64 [N, L], padded at the start so every row ends
    where generation continues; position ids are then mask.cumsum(-1) - 1."""
    n, length = len(rows), max(len(r) for r in rows)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask


def decode_answer(tok: Tokenizer, ids: list[int], eos_token_id: int) -> str:
    """Generated ids up to the first EOS, as text without special tokens."""
    if eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id)]
    return tok.decode(ids, skip_special_tokens=True).strip()
