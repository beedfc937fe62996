"""The model a recipe trains: its base (per family), quantized per recipe, LoRA with the planned ranks,
temporal branches; saved as an adapter dir and loaded back exactly as trained.

Train and export both build through here (export never imports train.py). A VideoCLIP wraps the
dual encoders (retrieval), a VideoLLM the generative family; both expose `.core`, the PEFT model the
adapters live in, and `.temporal`, the context their temporal layers read.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout
from toolchain.adapters.temporal import attach_temporal, load_temporal, plain_lora_view, save_temporal
from toolchain.errors import RecipeError
from toolchain.models.build import BaseInfo, base_class, base_info, load_base
from toolchain.models.pooling import build_pooling, load_pooling, save_pooling
from toolchain.models.video_clip import VideoCLIP
from toolchain.models.video_llm import VideoLLM
from toolchain.recipe import Recipe

# video-llm: where each quantizable group lives (module names from the model's root)
GROUP_MODULES = {"vision": "model.vision_tower", "fusion": "model.multi_modal_projector",
                 "decoder": "model.language_model"}


def model_info(recipe: Recipe) -> BaseInfo:
    """The base's constants, checked against the recipe (family, and X-CLIP's fixed frame count)."""
    info = base_info(recipe.model.name_or_path, recipe.model.family)
    if info.num_frames is not None and info.num_frames != recipe.frames.k:
        raise RecipeError(
            f"frames.k is {recipe.frames.k}, but the xclip base {recipe.model.name_or_path} takes exactly "
            f"vision_config.num_frames = {info.num_frames} frames; set frames.k: {info.num_frames}"
        )
    return info


def embedding_dim(base) -> int:
    config = base.config if hasattr(base, "config") else base.get_base_model().config
    return int(config.projection_dim)


def build_video_model(recipe: Recipe, info: BaseInfo, core: nn.Module, pool_state: dict | None = None):
    """Wrap a base (plain, quantized or PEFT) for video; a transformer pooling starts from pool_state."""
    f, m = recipe.frames, recipe.model
    if info.family == "video-llm":
        return VideoLLM(core, f.k, f.selector, info.image_size, info.mean, info.std, info.resize_shortest,
                        info.rescale, info.resample)
    pool = build_pooling(m.pooling, embedding_dim(core), f.k, m.pooling_layers)
    if pool is not None:
        if pool_state is not None:
            pool.load_state_dict(pool_state)
        pool.to(next(core.parameters()).device)
    return VideoCLIP(core, f.k, f.selector, info.image_size, info.mean, info.std, info.family, pool,
                     info.resize_shortest, info.rescale, info.resample)


def default_unquantized(info: BaseInfo) -> list[str]:
    """What transformers keeps out of 4-bit by itself: the output layer and the weights tied to it
    (get_keys_to_not_convert, read on a weightless copy of the model)."""
    import torch
    from transformers import AutoConfig
    from transformers.quantizers.base import get_keys_to_not_convert

    with torch.device("meta"):
        empty = base_class(info.family)(AutoConfig.from_pretrained(info.path))
    return sorted(get_keys_to_not_convert(empty))


def unquantized_modules(recipe: Recipe, info: BaseInfo) -> list[str] | None:
    """bitsandbytes' skip list from adapters.keep_unquantized and adapters.quantize_groups (None: transformers' default)."""
    a = recipe.adapters
    if a.keep_unquantized == "default" and a.quantize_groups is None:
        return None
    keep = default_unquantized(info) if a.keep_unquantized == "default" else list(a.keep_unquantized)
    if a.quantize_groups is not None:
        keep += [GROUP_MODULES[g] for g in GROUP_MODULES if g not in a.quantize_groups]
    return keep


def quantization_config(recipe: Recipe, info: BaseInfo):
    config = bnb_config(recipe.adapters)
    skip = unquantized_modules(recipe, info)
    if config is not None and skip is not None:
        config.llm_int8_skip_modules = skip
    return config


def build_trainable(recipe: Recipe, info: BaseInfo, device: str, plan=None):
    """The model as trained: quantized frozen base (per recipe), LoRA adapters (ranks per plan), pooling."""
    base = load_base(info, quantization_config(recipe, info), device)
    keep_training_layout(base)
    model = build_video_model(recipe, info, add_lora(base, recipe.adapters, plan))
    if recipe.adapters.temporal.enabled:
        attach_temporal(model.core, recipe.adapters.temporal, recipe.frames.k, model.temporal)
    return model


def save_adapter(model, recipe: Recipe, adapter_dir: Path) -> None:
    """PEFT's own format for plain LoRA; temporal and pooling parameters beside it in safetensors."""
    with plain_lora_view(model.core):
        # A LoRA on a (tied) lm_head changes no base weight: the base's embeddings are not copied in.
        extra = {"save_embedding_layers": False} if model.family == "video-llm" else {}
        model.core.save_pretrained(str(adapter_dir), safe_serialization=True, **extra)
    if recipe.adapters.temporal.enabled:
        save_temporal(model.core, adapter_dir, recipe.adapters.temporal, recipe.frames.k)
    if model.pool is not None:
        save_pooling(model.pool, adapter_dir)


def load_as_trained(run_dir: Path, recipe: Recipe, info: BaseInfo, device: str = "cpu"):
    """The model exactly as trained and evaluated: quantized base (per recipe) plus the saved adapter."""
    from peft import PeftModel

    base = load_base(info, quantization_config(recipe, info), device)
    keep_training_layout(base)
    adapter_dir = Path(run_dir) / "adapter"
    model = build_video_model(recipe, info, PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False))
    if recipe.adapters.temporal.enabled:
        load_temporal(model.core, adapter_dir, recipe.adapters.temporal, recipe.frames.k, model.temporal)
    if model.pool is not None:
        load_pooling(model.pool, adapter_dir)
    return model.eval()
