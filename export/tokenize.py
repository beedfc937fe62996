"""Torch-free text tokenization with a `tokenizers` tokenizer.json, shared by training and the runtime."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def encode_texts(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids, attention_mask: int64 [len(texts), max_length]."""
    encs = tok.encode_batch(list(texts))
    width = len(encs[0].ids) if encs else 0
    if encs and all(len(e.ids) == width for e in encs):  # padded to one length: fill flat arrays, no nested lists
        shape, count = (len(encs), width), len(encs) * width
        ids = np.fromiter(chain.from_iterable(e.ids for e in encs), dtype=np.int64, count=count).reshape(shape)
        mask = np.fromiter(chain.from_iterable(e.attention_mask for e in encs), dtype=np.int64, count=count).reshape(shape)
        return ids, mask
    ids = np.array([e.ids for e in encs], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask
