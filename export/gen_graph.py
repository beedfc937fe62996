"""The modules that become the generative graphs: thin wrappers around the model's own methods.

`DecoderGraph` runs the decoder's own forward with a transformers DynamicCache built from flat
past tensors; `EmbeddingGraph` runs the model's own input embeddings and merges the video tokens
into their placeholders. No modelling code is copied.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, object]:
    """(decoder body, lm_head, text config) of a causal LM or of a LLaVA-style VLM.

    A causal LM (LlamaForCausalLM, Qwen2ForCausalLM) keeps its body in `.model`; a VLM
    (LlavaOnevisionForConditionalGeneration) keeps it in `.model.language_model`.
    """
    head = model.get_output_embeddings()
    inner = getattr(model, "model", None)
    body = getattr(inner, "language_model", None) or inner
    if head is None or body is None:
        raise TypeError(f"{type(model).__name__} has no decoder body / lm_head to export")
    return body, head, model.config.get_text_config(decoder=True)


def video_token_id(model: nn.Module) -> int:
    """The placeholder id video features replace (-1: a text-only model, nothing is merged)."""
    token = getattr(model.config, "video_token_id", None)
    if token is None:
        token = getattr(model.config, "video_token_index", None)
    return -1 if token is None else int(token)


class DecoderGraph(nn.Module):
    """inputs_embeds, attention_mask, position_ids, *past (key, value per layer) -> logits, *present."""

    positional_inputs = 3  # before *past

    def __init__(self, model: nn.Module):
        super().__init__()
        self.body, self.head, self.config = decoder_parts(model)

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.config)
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                        cache=cache, use_cache=True)
        logits = self.head(out.last_hidden_state)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (logits, *present)


def merge_features(embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor, token_id: int) -> torch.Tensor:
    """Put feature row i at the i-th placeholder of the flattened batch; other positions keep their embedding.

    cumsum/where instead of masked_scatter (which exports to a data-dependent op): the placeholders'
    running count indexes the feature rows. A zero row is appended so that a text-only step
    (image_features with 0 rows, or ids without placeholders) indexes something valid.
    """
    batch, seq, hidden = embeds.shape
    flat_ids = input_ids.reshape(-1)
    is_token = flat_ids == token_id
    padded = torch.cat([features.to(embeds.dtype), embeds.new_zeros(1, hidden)], dim=0)
    count = features.shape[0]
    index = torch.cumsum(is_token.to(torch.int64), dim=0) - 1
    index = torch.where(is_token, index.clamp(max=count), torch.full_like(index, count))
    merged = torch.where(is_token[:, None], padded[index], embeds.reshape(-1, hidden))
    return merged.reshape(batch, seq, hidden)


class EmbeddingGraph(nn.Module):
    """input_ids int64 [B, S] + image_features [T, H] -> inputs_embeds [B, S, H]."""

    def __init__(self, model: nn.Module, token_id: int | None = None):
        super().__init__()
        self.embed = model.get_input_embeddings()
        self.token_id = video_token_id(model) if token_id is None else token_id

    def forward(self, input_ids, image_features):
        return merge_features(self.embed(input_ids), input_ids, image_features, self.token_id)


class VisionGraph(nn.Module):
    """pixel_values uint8 [B, N, H, W, 3] -> (image_features float32 [B*T, D], frame_indices int64 [B, K]):
    the model's own `encode_frames` (selector, fused preprocessing, tower with the temporal branch,
    projector, pooling), its video tokens flattened in batch order as the embedding graph merges them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        tokens, idx = self.model.encode_frames(pixel_values)
        return tokens.flatten(0, 1).float(), idx
