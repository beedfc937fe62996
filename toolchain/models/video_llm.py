"""Generative video-language model over transformers' LlavaOnevisionForConditionalGeneration.

uint8 frames -> selector -> preprocessing -> vision tower (with the temporal branch) -> projector ->
2x2 pooling -> video tokens, which replace the video placeholders in the prompt's embeddings; the
decoder then generates the answer greedily. Training, eval and the export (issue 17) use the same
pieces, each written once:

(a) video tokens: `VideoLLM.encode_frames(frames)` with frames uint8 [B, N, H, W, 3] returns
    (video_tokens float [B, T, D], frame_indices int64 [B, K]); it is `prepare_frames` (the frame
    selector and the fused preprocessing, shared with the dual encoders) followed by
    `VideoLLM.video_tokens(pixels [B, K, 3, S, S], motion [B, K])`, which calls transformers'
    `get_video_features` (tower over the B*K frames as one batch, projector, pooling, the trailing
    image_newline) while the temporal context says K and the motion, so temporal LoRA layers see
    each clip's frames as a sequence again. T = prompt.video_token_count(image_size, patch, K).
(b) prompts: toolchain/models/prompt.py (torch-free; `VideoLLM.prompt_format(template)` gives this
    model's format) builds the ids with T placeholders at {video}; `merge_video_tokens` puts the
    video tokens at the placeholders (cumsum/where over the flattened batch, no masked_scatter);
    `VideoLLM.embed(ids, video_tokens)` = input embeddings + merge.
(c) generation: `greedy_generate(model, video_tokens, prompts, max_new_tokens)`: prefill the merged
    embeddings (left-padded, position ids from the mask), then one token at a time with the KV
    cache until EOS or max_new_tokens; `VideoLLM.decode_step` is the decoder call it repeats.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn

from toolchain.adapters.temporal import TemporalContext, bind_temporal
from toolchain.models.prompt import PromptFormat, pad_left, video_token_count
from toolchain.models.video_clip import prepare_frames


def merge_video_tokens(embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor,
                       video_token_id: int) -> torch.Tensor:
    """embeds [B, L, D] with the rows of `features` [N, D] placed, in order, at the video placeholders
    of `input_ids` [B, L] read row by row (N placeholders in all; N = 0 leaves embeds as they are)."""
    b, length, d = embeds.shape
    flat_ids, flat = input_ids.reshape(-1), embeds.reshape(-1, d)
    is_video = flat_ids == video_token_id
    slot = torch.cumsum(is_video.to(torch.int64), 0) - 1  # the i-th placeholder takes feature row i
    padded = torch.cat([features.to(flat.dtype), flat.new_zeros(1, d)])  # a row for "no placeholder yet"
    slot = torch.where(is_video, slot, torch.full_like(slot, features.shape[0]))
    return torch.where(is_video[:, None], padded[slot], flat).reshape(b, length, d)


class VideoLLM(nn.Module):
    """Wraps a (possibly PEFT-wrapped, possibly 4-bit) LlavaOnevisionForConditionalGeneration."""

    def __init__(self, vlm: nn.Module, k: int, selector: str, image_size: int, mean, std,
                 resize_shortest: int | None = None, rescale: float = 1 / 255, resample: str = "bicubic"):
        super().__init__()
        self.vlm = vlm
        self.k, self.selector, self.image_size = k, selector, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_shortest, self.rescale, self.resample = resize_shortest, rescale, resample
        self.family, self.pool = "video-llm", None
        self.temporal = TemporalContext()
        bind_temporal(vlm, self.temporal)

    @property
    def core(self) -> nn.Module:
        """The wrapped model (PEFT's, when adapters are on): what adapters attach to and are saved from."""
        return self.vlm

    @property
    def hf(self) -> nn.Module:
        """The transformers model itself (LoRA layers, if any, sit inside it)."""
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    @property
    def config(self):
        return self.hf.config

    def preparer(self):
        return partial(prepare_frames, k=self.k, selector=self.selector, image_size=self.image_size,
                       mean=self.mean, std=self.std, resize_shortest=self.resize_shortest,
                       rescale=self.rescale, resample=self.resample)

    def prepare_frames(self, frames: torch.Tensor):
        """uint8 [B,N,H,W,3] -> (pixels float [B,K,3,S,S], indices int64 [B,K], motion float [B,K])."""
        return self.preparer()(frames)

    def num_video_tokens(self) -> int:
        v = self.config.vision_config
        return video_token_count(v.image_size, v.patch_size, self.k)

    def prompt_format(self, template: str) -> PromptFormat:
        text = self.config.text_config
        eos = text.eos_token_id[0] if isinstance(text.eos_token_id, list) else text.eos_token_id
        pad = text.pad_token_id if text.pad_token_id is not None else eos
        return PromptFormat(template, int(self.config.video_token_id), self.num_video_tokens(), int(eos), int(pad))

    def video_tokens(self, pixels: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """pixels [B,K,3,S,S], motion [B,K] -> video tokens [B, T, D] (see the module doc, (a))."""
        cfg = self.config
        self.temporal.k, self.temporal.motion, self.temporal.active = pixels.shape[1], motion, True
        try:
            out = self.hf.model.get_video_features(
                pixel_values_videos=pixels.to(self.hf.dtype), vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        finally:
            self.temporal.active, self.temporal.motion = False, None
        return out.pooler_output

    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B,N,H,W,3] -> (video tokens [B,T,D], frame indices [B,K]): the export's vision graph."""
        pixels, idx, motion = self.prepare_frames(frames)
        return self.video_tokens(pixels, motion), idx

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def embed(self, input_ids: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings of the prompt ids with the video tokens at the placeholders."""
        return merge_video_tokens(self.token_embeddings(input_ids), input_ids, video_tokens.flatten(0, 1),
                                  self.config.video_token_id)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """Training forward: [B, L, vocab] logits of right-padded ids (no cache)."""
        out = self.hf(inputs_embeds=self.embed(input_ids, video_tokens), attention_mask=attention_mask, use_cache=False)
        return out.logits

    def decode_step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache=None):
        """One decoder call of generation: (logits of the last position [B, vocab], the updated KV cache)."""
        kw = {cache_argument(type(self.hf)): cache}
        out = self.hf(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=True, logits_to_keep=1, **kw)
        new_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits[:, -1].float(), new_cache


def cache_argument(cls) -> str:
    """The KV cache's keyword: transformers 5.2x renamed past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_generate(model: VideoLLM, video_tokens: torch.Tensor, prompts: list[list[int]], max_new_tokens: int,
                    eos_token_id: int, pad_token_id: int) -> list[list[int]]:
    """Greedy decoding for a batch: prompt ids (each with its video's placeholders; video_tokens
    [B, T, D], one video per prompt) -> generated ids per prompt, EOS included when it came."""
    dev = video_tokens.device
    ids, mask = (torch.from_numpy(a).to(dev) for a in pad_left(prompts, pad_token_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, cache = model.decode_step(model.embed(ids, video_tokens), mask, positions)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        done |= nxt == eos_token_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = model.decode_step(model.token_embeddings(nxt[:, None]), mask, positions, cache)
    return out
