"""Module groups of a video-text model: which linear layers belong to vision, text, fusion or decoder.

Groups come from module paths, not from a model class, so one rule table covers CLIP, X-CLIP,
vision-text dual encoders and LLaVA-style video-llms. A linear outside the towers (projections into
the joint space, X-CLIP's multi-frame integration transformer and prompt generator, a video-llm's
multi_modal_projector) joins or pools modalities: fusion. A video-llm's language model is the decoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

GROUPS = ("vision", "text", "fusion", "decoder")

# First match wins. Names are relative to the base model (no PEFT `base_model.model.` prefix).
GROUP_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(^|\.)(mit|prompts_generator|prompts_visual_projection)(\.|$)"), "fusion"),
    (re.compile(r"(^|\.)(visual_projection|text_projection)$"), "fusion"),
    (re.compile(r"(^|\.)multi_modal_projector(\.|$)"), "fusion"),
    (re.compile(r"(^|\.)(vision_model|vision_tower)\."), "vision"),
    (re.compile(r"(^|\.)text_model\."), "text"),
    (re.compile(r"(^|\.)(language_model\.|lm_head$)"), "decoder"),
]
PEFT_PREFIX = re.compile(r"^(.*\.)?base_model\.model\.")
ADAPTER_PARTS = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.")


@dataclass(frozen=True)
class LinearLayer:
    """One adaptable linear layer: its module name, group and shape."""

    name: str
    group: str
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


def group_of(name: str) -> str:
    for pattern, group in GROUP_RULES:
        if pattern.search(name):
            return group
    return "fusion"


def base_name(name: str) -> str | None:
    """The base-model name of a linear: strips PEFT's wrapper prefix and `.base_layer`; None for adapter parts."""
    if ADAPTER_PARTS.search(name + "."):
        return None
    name = PEFT_PREFIX.sub("", name)
    return name[: -len(".base_layer")] if name.endswith(".base_layer") else name


def matches_target(name: str, targets: list[str] | str) -> bool:
    """PEFT's matching: 'all-linear', a regex string (full match), or a list of name suffixes."""
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def output_layer(model: nn.Module) -> str | None:
    """The base-model name of the output layer (lm_head), which PEFT's 'all-linear' leaves out."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if out is None:
        return None
    return next((base_name(n) for n, m in base.named_modules() if m is out), None)


def linear_layers(model: nn.Module, targets: list[str] | str = "all-linear") -> list[LinearLayer]:
    """Every linear layer of `model` (plain, bitsandbytes or PEFT-wrapped) that `targets` selects
    ('all-linear' as PEFT reads it: without the output layer)."""
    out, seen = [], set()
    skip = output_layer(model) if targets == "all-linear" else None
    for raw, module in model.named_modules():
        name = base_name(raw)
        if name is None or name in seen or name == skip or not isinstance(module, nn.Linear):
            continue
        if matches_target(name, targets):
            seen.add(name)
            out.append(LinearLayer(name, group_of(name), module.in_features, module.out_features))
    return out


def group_summary(layers: list[LinearLayer]) -> dict[str, dict]:
    """{group: {layers, params}} for the groups that have layers, in GROUPS order."""
    out = {}
    for g in GROUPS:
        members = [x for x in layers if x.group == g]
        if members:
            out[g] = {"layers": len(members), "params": sum(x.params for x in members)}
    return out
