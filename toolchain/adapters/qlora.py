"""QLoRA setup: a bitsandbytes config taken explicitly from the recipe, and PEFT LoRA on top."""

from __future__ import annotations

import torch
from torch import nn

from toolchain.errors import RecipeError
from toolchain.recipe import AdaptersSection


def bnb_config(a: AdaptersSection):
    """BitsAndBytesConfig for the recipe. Its defaults are not QLoRA, so every field is set here."""
    if a.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if a.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=a.quantization,
        bnb_4bit_use_double_quant=a.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, a.compute_dtype),
    )


def lora_config(a: AdaptersSection, plan=None):
    """PEFT LoraConfig; with a RankPlan, per-layer ranks and alphas and only the layers it adapts."""
    from peft import LoraConfig

    per_layer = plan.lora_kwargs() if plan is not None else {"target_modules": a.target_modules}
    return LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none", **per_layer)


def linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers (full precision or bitsandbytes) that LoRA can target."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def add_lora(model: nn.Module, a: AdaptersSection, plan=None) -> nn.Module:
    """Wrap the base with trainable LoRA adapters (ranks from `plan` if given); only those train."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(a, plan))
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "Target modules" not in str(exc):
            raise
        raise RecipeError(
            f"adapters.target_modules: {a.target_modules} matched no layer of the base. "
            f"Linear layers it has: {', '.join(linear_names(model))} (or use 'all-linear')"
        ) from None


def keep_training_layout(model: nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference when a module runs in eval mode.

    On AVX512-BF16 CPUs `Linear4bit.forward` in eval mode converts its weight in place to a packed
    inference layout and never converts back; the next training step then fails inside
    `matmul_4bit` ("a view of a leaf Variable ... in-place operation"). We evaluate between
    training phases, so the layout must stay trainable. Returns how many layers were touched.
    """
    touched = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def logical_numel(p: torch.Tensor) -> int:
    """Parameter count as the model sees it: a packed 4-bit tensor stores two weights per byte."""
    state = getattr(p, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else p.numel()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())
    return trainable, total


def precision_summary(model: nn.Module) -> str:
    """', 4-bit: N linears; full precision: a, b' for a quantized model ('' when nothing is quantized)."""
    from toolchain.adapters.groups import base_name, group_of

    quantized, plain = 0, []
    for raw, module in model.named_modules():
        name = base_name(raw)  # None for LoRA's own A and B
        if name is None or not isinstance(module, nn.Linear):
            continue
        if type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            quantized += 1
        else:
            plain.append(name)
    if not quantized:
        return ""
    groups: dict[str, list[str]] = {}
    for name in plain:
        groups.setdefault(group_of(name), []).append(name)
    shown = ", ".join(names[0] if len(names) == 1 else f"the {g} group ({len(names)} linears)" for g, names in groups.items())
    return f" ({quantized} linears in 4-bit; full precision: {shown or 'none'})"
