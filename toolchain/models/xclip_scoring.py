"""X-CLIP's own video-text score: text embeddings conditioned on each video by its prompt generator.

transformers' `XCLIPModel.forward` does not score a caption's plain text embedding against the
video: it adds `prompts_generator(text, video patch features)` to the text embedding of every
(video, caption) pair, normalises both, and takes the dot product (`logits_per_video`). These
functions call the same submodules in the same order on the outputs of `get_video_features` and
`get_text_features`, so training, evaluation, the PyTorch reference and the exported scorer graph
all compute X-CLIP's real score, in batches of videos and captions that may differ in size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_context(clip, last_hidden_state: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Vision tower's last hidden state [B*K, 1+P, H] -> the prompt generator's visual input [B, P, D]:
    patch tokens, `prompts_visual_layernorm`, `@ prompts_visual_projection`, mean over the K frames."""
    patches = clip.prompts_visual_layernorm(last_hidden_state[:, 1:, :])
    projected = patches @ clip.prompts_visual_projection
    return projected.reshape(batch, frames, projected.shape[1], projected.shape[2]).mean(dim=1).float()


def video_features(clip, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels [B,K,3,S,S] -> (video embeddings [B,D] L2-normalised, prompt context [B,P,D]), one tower pass."""
    b, k = pixels.shape[:2]
    out = clip.get_video_features(pixel_values=pixels)
    return F.normalize(out.pooler_output.float(), dim=-1), prompt_context(clip, out.last_hidden_state, b, k)


def conditioned_scores(clip, video: torch.Tensor, context: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """video [V,D] (normalised), context [V,P,D], text features [T,D] (projected, not normalised)
    -> cosine scores [V,T] of each video against each caption conditioned on that video."""
    pairs = text.unsqueeze(0).expand(video.shape[0], -1, -1)
    conditioned = pairs + clip.prompts_generator(pairs, context).float()
    return torch.einsum("vd,vtd->vt", video, F.normalize(conditioned, dim=-1))


def score_in_chunks(clip, video, context, text, chunk: int = 64) -> torch.Tensor:
    """conditioned_scores over all pairs, `chunk` videos at a time (bounded memory for big eval sets)."""
    return torch.cat([conditioned_scores(clip, video[i:i + chunk], context[i:i + chunk], text)
                      for i in range(0, video.shape[0], chunk)])
