"""Torch-free text generation over embedding.onnx + decoder.onnx: prefill, then one step per token.

numpy + onnxruntime (+ tokenizers in `generate_text`) only. Greedy and beam search follow
transformers' `generate(do_sample=False)` (beam: length_penalty 1.0, early_stopping False), so an
fp32 export gives PyTorch's tokens; prompts of different lengths are left-padded as there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from export.gen_session import GenSessions, reorder
from toolchain.errors import VqtoolError

TokenCallback = Callable[[int, list[int]], None]  # (step, one new token id per batch row)


def check_prompts(prompt_ids, vocab: int) -> list[list[int]]:
    """One prompt (ints) or a batch (lists of ints); none empty, every id inside the vocabulary."""
    if isinstance(prompt_ids, np.ndarray):
        prompt_ids = prompt_ids.tolist()
    if not isinstance(prompt_ids, (list, tuple)) or len(prompt_ids) == 0:
        raise VqtoolError("prompt_ids is empty: give at least one token id (encode the prompt with the tokenizer)")
    rows = [list(prompt_ids)] if all(isinstance(t, (int, np.integer)) for t in prompt_ids) else list(prompt_ids)
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, (list, tuple)) or not row:
            raise VqtoolError(f"prompt {i} is empty or not a list of token ids; encode the prompt text first")
        bad = [t for t in row if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab]
        if bad:
            raise VqtoolError(f"prompt {i} has token id {bad[0]!r} outside the decoder's vocabulary 0..{vocab - 1}")
    return [[int(t) for t in row] for row in rows]


def check_features(features, hidden: int, placeholders: int, token_id: int) -> np.ndarray | None:
    if features is None:
        if placeholders:
            raise VqtoolError(f"the prompt has {placeholders} video placeholder token(s) (id {token_id}) but no "
                              "image_features were given")
        return None
    if not isinstance(features, np.ndarray) or features.dtype != np.float32:
        kind = features.dtype if isinstance(features, np.ndarray) else type(features).__name__
        raise VqtoolError(f"image_features must be a float32 numpy array [num_tokens, {hidden}], got {kind}; "
                          "use the vision graph's output as it is (or .astype(np.float32))")
    if features.ndim != 2 or features.shape[1] != hidden:
        raise VqtoolError(f"image_features must have shape [num_tokens, {hidden}], got {list(features.shape)}")
    if features.shape[0] != placeholders:
        raise VqtoolError(f"image_features has {features.shape[0]} rows but the prompt has {placeholders} video "
                          f"placeholder token(s) (id {token_id}); put one placeholder per feature row in the prompt")
    return features


def check_counts(max_new_tokens, num_beams) -> None:
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise VqtoolError(f"{name} must be a whole number >= 1, got {value!r}")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """ids and attention mask [B, longest], padding on the left (what a decoder-only model expects)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def positions(mask: np.ndarray, length: int) -> np.ndarray:
    """Position ids of the last `length` columns: count of real tokens before each, as transformers does."""
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return pos[:, -length:]


def generate(sessions: GenSessions, prompt_ids, image_features: np.ndarray | None = None, max_new_tokens: int = 32,
             num_beams: int = 1, on_token: TokenCallback | None = None, eos_ids: Sequence[int] = (),
             pad_id: int = 0, video_token_id: int | None = None, min_new_tokens: int = 0) -> list[list[int]]:
    """New token ids per prompt (EOS included when reached), greedy or beam search.

    prompt_ids: a list of ids or a batch of them; image_features [T, hidden] float32 fill the T video
    placeholders (`video_token_id`, default the embedding graph's) of the whole batch in order. on_token(step, ids) streams each new
    token of every row (greedy); beam search calls it once per token of the best beams at the end.
    min_new_tokens: EOS cannot be chosen before that many tokens (transformers' min_new_tokens).
    """
    check_counts(max_new_tokens, num_beams)
    rows = check_prompts(prompt_ids, sessions.vocab)
    video_token_id = sessions.video_token_id if video_token_id is None else video_token_id
    placeholders = sum(row.count(video_token_id) for row in rows)
    features = check_features(image_features, sessions.layout.hidden, placeholders, video_token_id)
    ids, mask = left_pad(rows, pad_id)
    eos = np.array(sorted({int(e) for e in eos_ids}), np.int64)
    run = sessions.step if not min_new_tokens else suppress_eos(sessions.step, eos, min_new_tokens)
    if num_beams == 1:
        return greedy(run, sessions, ids, mask, features, max_new_tokens, eos, pad_id, on_token)
    out = beam_search(run, sessions, ids, mask, features, max_new_tokens, num_beams, eos, video_token_id)
    for step in range(max(len(r) for r in out) if on_token else 0):
        on_token(step, [r[step] if step < len(r) else pad_id for r in out])
    return out


def suppress_eos(step, eos: np.ndarray, min_new_tokens: int):
    """A decoder step whose first `min_new_tokens` logits give EOS -inf, as transformers' MinNewTokens processor."""
    calls = [0]

    def run(*args):
        logits, past = step(*args)
        if calls[0] < min_new_tokens and eos.size:
            logits[:, eos] = -np.inf
        calls[0] += 1
        return logits, past
    return run


def greedy(run, sessions, ids, mask, features, max_new_tokens, eos, pad_id, on_token) -> list[list[int]]:
    batch = ids.shape[0]
    logits, past = run(sessions.embed(ids, features), mask, positions(mask, ids.shape[1]),
                                 sessions.empty_past(batch))
    done = np.zeros(batch, bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_new_tokens):
        token = np.where(done, pad_id, logits.argmax(-1))
        for i in np.flatnonzero(~done):
            out[i].append(int(token[i]))
        if on_token:
            on_token(step, [int(t) for t in token])
        done |= np.isin(token, eos)
        if done.all() or step == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        logits, past = run(sessions.embed(token[:, None], None), mask, positions(mask, 1), past)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, best first."""
    part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1)


def beam_search(run, sessions, ids, mask, features, max_new_tokens, beams, eos, token_id) -> list[list[int]]:
    """transformers' vectorised beam search (its _beam_search), in numpy; returns the best beam per prompt."""
    batch, width = ids.shape
    keep = max(2, 1 + len(eos)) * beams
    ids, mask = np.repeat(ids, beams, 0), np.repeat(mask, beams, 0)
    feats = None if features is None else repeat_features(features, ids[::beams], beams, token_id)
    logits, past = run(sessions.embed(ids, feats), mask, positions(mask, width), sessions.empty_past(batch * beams))
    run_seq = np.zeros((batch, beams, max_new_tokens), np.int64)
    run_score = np.full((batch, beams), -1e9, np.float32)
    run_score[:, 0] = 0
    fin = {"seq": np.zeros_like(run_seq), "score": np.full((batch, beams), -1e9, np.float32),
           "len": np.zeros((batch, beams), np.int64), "done": np.zeros((batch, beams), bool)}
    improvable = np.ones((batch, 1), bool)
    for t in range(max_new_tokens):
        vocab = logits.shape[-1]
        total = (log_softmax(logits) + run_score.reshape(-1, 1)).reshape(batch, beams * vocab)
        idx = top_k(total, keep)
        top_score = np.take_along_axis(total, idx, -1)
        src, token = idx // vocab, idx % vocab
        top_seq = np.take_along_axis(run_seq, src[..., None], 1)
        top_seq[:, :, t] = token
        hits = np.isin(token, eos) | (t + 1 >= max_new_tokens)
        running = top_k(top_score + hits * np.float32(-1e9), beams)
        run_seq = np.take_along_axis(top_seq, running[..., None], 1)
        run_score = np.take_along_axis(top_score + hits * np.float32(-1e9), running, -1)
        rows = (np.take_along_axis(src, running, -1) + np.arange(batch)[:, None] * beams).reshape(-1)
        update_finished(fin, top_seq, top_score, hits, improvable, beams, t)
        improvable &= np.any(run_score[:, :1] / (t + 1) > np.where(fin["done"], fin["score"].min(1, keepdims=True), -1e9),
                             axis=-1, keepdims=True)
        if not improvable.any() or hits.all() or t == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((batch * beams, 1), np.int64)], axis=1)
        past = reorder(past, rows, sessions.device)
        logits, past = run(sessions.embed(run_seq[:, :, t].reshape(-1, 1), None), mask, positions(mask, 1), past)
    return [fin["seq"][b, 0, :fin["len"][b, 0]].tolist() for b in range(batch)]


def update_finished(fin: dict, top_seq, top_score, hits, improvable, beams: int, t: int) -> None:
    """Candidates among the top `beams` that just ended join the finished hypotheses if they score better."""
    just = hits & (np.arange(top_seq.shape[1]) < beams)[None, :]
    score = top_score / np.float32(t + 1) + (~improvable) * np.float32(-1e9) + (~just) * np.float32(-1e9)
    merged = {"seq": np.concatenate([fin["seq"], top_seq], 1), "score": np.concatenate([fin["score"], score], 1),
              "len": np.concatenate([fin["len"], np.full(just.shape, t + 1)], 1),
              "done": np.concatenate([fin["done"], just], 1)}
    best = top_k(merged["score"], beams)
    for key, value in merged.items():
        fin[key] = np.take_along_axis(value, best[..., None] if value.ndim == 3 else best, 1)


def repeat_features(features: np.ndarray, ids: np.ndarray, beams: int, token_id: int) -> np.ndarray:
    """Feature rows in the order the beam-expanded batch meets its placeholders (each prompt's rows `beams` times)."""
    counts = (ids == token_id).sum(1)
    parts = np.split(features, np.cumsum(counts)[:-1])
    return np.concatenate([np.tile(part, (beams, 1)) for part in parts])


def text_streamer(tokenizer, on_text: Callable[[str], None] | None) -> TokenCallback | None:
    """A greedy on_token callback that sends on_text only what decoding the new tokens added (None: no streaming)."""
    if on_text is None:
        return None
    new: list[int] = []
    shown = [""]  # the text streamed so far

    def stream(step: int, tokens: list[int]) -> None:
        new.append(tokens[0])
        text = tokenizer.decode(new, skip_special_tokens=True)
        if text != shown[0]:
            on_text(text[len(shown[0]):] if text.startswith(shown[0]) else text)
            shown[0] = text

    return stream


def generate_text(sessions: GenSessions, tokenizer, prompt: str, image_features: np.ndarray | None = None,
                  max_new_tokens: int = 32, num_beams: int = 1, on_text: Callable[[str], None] | None = None,
                  eos_ids: Sequence[int] = (), video_token_id: int | None = None) -> str:
    """One prompt string -> generated text; on_text streams the decoded text as it grows (greedy)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise VqtoolError("prompt is empty: give the text to continue (a caption request or a question)")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    out = generate(sessions, ids, image_features, max_new_tokens, num_beams, text_streamer(tokenizer, on_text),
                   eos_ids, video_token_id=video_token_id)[0]
    return tokenizer.decode(out, skip_special_tokens=True)
