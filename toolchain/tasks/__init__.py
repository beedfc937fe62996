"""Tasks: what the one training loop needs to know about retrieval, captioning or qa, and nothing else.

A task turns a loaded split into its training examples (`prepare`: tokenized captions, or prompts
with answers), streams them as the arguments of its loss (`batches`: index batches in, loss inputs
out), computes the loss (`loss(model, *inputs)`) and the eval metrics (`evaluate`), and says the
result in a few lines (`summary`). The data object `prepare` returns has `len()` = its number of
training examples and `.clips`, the ClipSet it came from. TASKS is the registry.
"""

from __future__ import annotations

from toolchain.tasks import generative, retrieval
from toolchain.tasks.task import Task

TASKS: dict[str, Task] = {"retrieval": retrieval.TASK, "captioning": generative.CAPTIONING, "qa": generative.QA}
