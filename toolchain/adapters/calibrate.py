"""Layer importance for rank allocation: Fisher information of a zero-initialised probe adapter.

The probe is the model as it would train at the recipe's uniform rank. LoRA starts with B = 0, so
the probe does not change the model, and ∂L/∂B = (∂L/∂y)(Ax)ᵀ is exactly the first-order benefit
of adapting that layer inside the subspace A spans. We average the squared gradient over a few
calibration batches (the empirical Fisher of B, which rewards signals that are consistently large,
not one noisy batch) and score a layer by the square root of its summed Fisher: the loss decrease
from a unit-norm step in the best direction is ‖g‖, not ‖g‖². One backward pass per batch, no
optimizer step: far cheaper than AdaLoRA's reallocation during training, and per layer, so the
allocator can honour per-modality budgets on top of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from toolchain.adapters.groups import base_name


def probe_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{base-model layer name: lora_B module} for every LoRA layer of a PEFT model."""
    out = {}
    for raw, module in model.named_modules():
        lora_b = getattr(module, "lora_B", None)
        if isinstance(lora_b, nn.ModuleDict) and "default" in lora_b:
            out[base_name(raw)] = lora_b["default"]
    return out


def fisher_scores(model: nn.Module, batches: Iterable, loss_fn: Callable[..., torch.Tensor],
                  progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """sqrt(mean over batches of sum((dL/dB)²)) for every LoRA layer of `model`; weights untouched."""
    probes = probe_modules(model)
    sums = {name: 0.0 for name in probes}
    n = 0
    was_training = model.training
    model.train()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(*batch).backward()
        for name, lora_b in probes.items():
            grad = lora_b.weight.grad
            sums[name] += 0.0 if grad is None else float(grad.detach().float().pow(2).sum())
        n += 1
        if progress:
            progress(1)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("importance calibration got no batch: the training set is smaller than one batch")
    return {name: (s / n) ** 0.5 for name, s in sums.items()}
