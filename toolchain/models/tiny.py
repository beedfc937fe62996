"""The built-in bases, `tiny-video-clip` and `tiny-video-llm`: their configs, word-level tokenizers and where they ship."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

BUILTIN_NAME = "tiny-video-clip"
BUILTIN_DIR = Path(__file__).parent / "tiny_video_clip"
LLM_NAME = "tiny-video-llm"
LLM_DIR = Path(__file__).parent / "tiny_video_llm"
# name -> (folder, the script that rebuilds it)
BUILTINS = {BUILTIN_NAME: (BUILTIN_DIR, "scripts/make_tiny_base.py"),
            LLM_NAME: (LLM_DIR, "scripts/make_tiny_video_llm.py")}
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
MAX_TEXT_LEN = 16
# The caption grammar plus a few common words, so other phrasings tokenize to something sensible.
WORDS = (
    "a an the red green blue yellow circle square triangle moves move moving left right up down "
    "shape object is and of to in on"
).split()


def word_level(tokens: list[str]) -> Tokenizer:
    """Lower-cased, whitespace/punctuation-split words; anything else is [UNK]."""
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return tok


def build_tokenizer() -> Tokenizer:
    tok = word_level(SPECIAL + WORDS)
    bos, eos = tok.token_to_id("[BOS]"), tok.token_to_id("[EOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)]
    )
    return tok


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TEXT_LEN, pad_token_id=0,
        bos_token_id=2, eos_token_id=3,
    )
    vision = dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        image_size=32, patch_size=8, num_channels=3,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


# tiny-video-llm: the caption grammar, the questions and the default prompts' words; <video> and
# <image> are the placeholders whose embeddings the vision tokens replace.
LLM_SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<video>", "<image>"]
LLM_WORDS = WORDS + (
    "what colour color which way does it describe video clip question answer this then first , . ? :"
).split()


def build_llm_tokenizer() -> Tokenizer:
    """Word-level, no post-processor: the prompt builder places every special token itself."""
    tok = word_level(LLM_SPECIAL + LLM_WORDS)
    tok.add_special_tokens(LLM_SPECIAL)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return tok
