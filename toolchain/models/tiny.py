"""The built-in `tiny-video-clip` base: its config, its word-level tokenizer and where it ships."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

BUILTIN_NAME = "tiny-video-clip"
BUILTIN_DIR = Path(__file__).parent / "tiny_video_clip"
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
MAX_TEXT_LEN = 16
# The caption grammar plus a few common words, so other phrasings tokenize to something sensible.
WORDS = (
    "a an the red green blue yellow circle square triangle moves move moving left right up down "
    "shape object is and of to in on"
).split()


def build_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    bos, eos = vocab["[BOS]"], vocab["[EOS]"]
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
