"""Turn a run dir into plain full-precision PyTorch: dequantize the 4-bit base, merge static LoRA into it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from toolchain.adapters.temporal import side_branch
from toolchain.errors import VqtoolError
from toolchain.models.assemble import build_video_model, load_as_trained, model_info
from toolchain.models.build import BaseInfo
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import Recipe, load_recipe


def load_run(run_dir: Path) -> tuple[Recipe, BaseInfo]:
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise VqtoolError(
            f"{run_dir} is not a finished run dir (needs recipe.yaml and adapter/); "
            "make one with: vqtool finetune RECIPE.yaml --output-dir DIR"
        )
    recipe = load_recipe(run_dir / "recipe.yaml")
    return recipe, model_info(recipe)


def dense_linear(module: nn.Module, delta: torch.Tensor | None = None) -> nn.Linear:
    """A float32 nn.Linear with the module's (dequantized) weight, plus an optional merged delta."""
    from peft.utils.integrations import dequantize_module_weight

    weight = dequantize_module_weight(module).detach().float().clone()
    if delta is not None:
        weight += delta.float()
    if not torch.isfinite(weight).all():
        raise VqtoolError(f"merging the adapter produced non-finite weights in a {type(module).__name__}")
    bias = getattr(module, "bias", None)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias.detach().float())
    return out


def is_quantized_linear(module: nn.Module) -> bool:
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4")


def merge_static_adapters(peft_model: nn.Module, adapter: str = "default") -> nn.Module:
    """Return the base model with every LoRA product merged and every quantized linear made dense.

    Temporal LoRA layers keep their gated residual as a side branch (it cannot merge).
    Merging into the *dequantized* base (not the original fp32 checkpoint) keeps the exported model
    equal to the one that was trained and evaluated, so parity is exact up to float rounding.
    """
    from peft.tuners.lora import LoraLayer

    model = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(d + ".") for d in done):
            continue
        if isinstance(module, LoraLayer):
            new = dense_linear(module.get_base_layer(), module.get_delta_weight(adapter))
            if hasattr(module, "temporal_params"):
                new = side_branch(module, new, adapter)
        elif is_quantized_linear(module):
            new = dense_linear(module)
        else:
            continue
        model.set_submodule(name, new)
        done.append(name)
    return plain_float32(model)


def plain_float32(model: nn.Module) -> nn.Module:
    """Drop transformers' quantized-model markers (nothing is quantized now) and cast to float32."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.float()
    return model


def merged_model(run_dir: Path) -> tuple[VideoCLIP, VideoCLIP, Recipe, BaseInfo]:
    """(as-trained model, merged float32 model, recipe, base info) for a run dir (a VideoLLM pair for a
    video-llm run: the same calls apply to it)."""
    recipe, info = load_run(run_dir)
    trained = load_as_trained(run_dir, recipe, info)
    merged_clip = merge_static_adapters(load_as_trained(run_dir, recipe, info).core)
    pool_state = None if trained.pool is None else trained.pool.state_dict()
    return trained, build_video_model(recipe, info, merged_clip, pool_state).eval(), recipe, info
