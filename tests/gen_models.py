"""Tiny generative models built from configs (random weights) for the export / generation tests."""

from __future__ import annotations

import torch

VOCAB = 96
VIDEO_TOKEN = 95
EOS = 2


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tiny_llava():
    """LLaVA-OneVision: a 2-layer SigLIP tower on 32x32 frames (16 patches, pooled to 4 per frame) + a Qwen2 decoder."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, vision_use_head=False)
    text = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=VIDEO_TOKEN - 1,
                               video_token_index=VIDEO_TOKEN, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


def video_features(model, batch: int = 1, frames: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values_videos, image_features [tokens, hidden]) from the model's own get_video_features."""
    size = model.config.vision_config.image_size
    pixels = torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        feats = model.model.get_video_features(pixels, vision_feature_layer=-1, vision_feature_select_strategy="full")
    return pixels, feats.pooler_output.flatten(0, 1)


EXPORTS: dict = {}


def exported(kind: str):
    """(model, dir with decoder.onnx + embedding.onnx) of tiny_llama / tiny_llava, exported once per session."""
    if kind not in EXPORTS:
        import tempfile
        from pathlib import Path

        from export.gen_export import export_decoder, export_embedding

        model = {"llama": tiny_llama, "llava": tiny_llava}[kind]()
        out = Path(tempfile.mkdtemp(prefix=f"vqtool-test-{kind}-"))
        export_decoder(model, out / "decoder.onnx")
        export_embedding(model, out / "embedding.onnx")
        EXPORTS[kind] = (model, out)
    return EXPORTS[kind]
