"""The Task record: the functions a task supplies to the training loop (see toolchain/tasks/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    prepare: Callable  # (recipe, info, model, clips, device) -> data
    batches: Callable  # (data, index stream, device) -> iterator of loss inputs
    loss: Callable  # (model, *inputs) -> scalar tensor
    evaluate: Callable  # (model, data, recipe) -> metrics dict (eval.json's "base" / "finetuned")
    summary: Callable  # (eval.json dict) -> lines for the end of the run
    augment: Callable = lambda recipe, data: data  # (recipe, training data) -> training data, more examples
    batch_keys: Callable = lambda data: None  # (training data) -> one key per example for train.batching=spread

