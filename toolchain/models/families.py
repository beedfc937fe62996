"""Bases of each family on disk: compose a dual encoder from two checkpoints, and tiny random
bases (clip, xclip, dual-encoder) saved with save_pretrained, for tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolchain.errors import RecipeError
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
from toolchain.models.tiny import MAX_TEXT_LEN, SPECIAL, WORDS, build_tokenizer

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def compose_dual_encoder(vision: str | Path, text: str | Path, out_dir: Path, projection_dim: int = 64,
                         seed: int = 0) -> Path:
    """VisionTextDualEncoderModel from a vision and a text checkpoint (local dirs), saved to out_dir
    with the text tower's tokenizer.json and the vision tower's preprocessor_config.json.

    The two projections are new (random, seeded): fine-tuning trains them through LoRA; saving the
    composed base keeps them fixed for export.
    """
    import torch
    from transformers import VisionTextDualEncoderModel

    vision, text, out_dir = Path(vision), Path(text), Path(out_dir)
    for folder, what in ((vision, "vision"), (text, "text")):
        if not (folder / "config.json").is_file():
            raise RecipeError(f"{what} checkpoint {folder} has no config.json; give a local model folder")
    if not (text / "tokenizer.json").is_file():
        raise RecipeError(f"text checkpoint {text} has no tokenizer.json (a `tokenizers` file is required)")
    torch.manual_seed(seed)
    model = VisionTextDualEncoderModel.from_vision_text_pretrained(
        str(vision), str(text), projection_dim=projection_dim)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    shutil.copyfile(text / "tokenizer.json", out_dir / "tokenizer.json")
    if (vision / "preprocessor_config.json").is_file():
        shutil.copyfile(vision / "preprocessor_config.json", out_dir / "preprocessor_config.json")
    return out_dir


def tiny_text_config(cls):
    return cls(vocab_size=len(SPECIAL) + len(WORDS), max_position_embeddings=MAX_TEXT_LEN,
               pad_token_id=0, bos_token_id=2, eos_token_id=3, **TINY)


def write_processor(out_dir: Path, size: int, shortest: int, mean=CLIP_MEAN, std=CLIP_STD) -> None:
    """A CLIPImageProcessor config: resize shortest side, centre crop, rescale, normalise."""
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": shortest}, crop_size={"height": size, "width": size},
                       image_mean=list(mean), image_std=list(std)).save_pretrained(str(out_dir))


def save_tiny_vision(out_dir: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIPVisionModel with a CLIP-style processor config: a vision tower to compose."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=8, **TINY)).save_pretrained(str(out_dir))
    write_processor(Path(out_dir), image_size, image_size + image_size // 8)
    return Path(out_dir)


def save_tiny_text(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random CLIPTextModel with the built-in word-level tokenizer.json: a text tower to compose."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    CLIPTextModel(tiny_text_config(CLIPTextConfig)).save_pretrained(str(out_dir))
    build_tokenizer().save(str(Path(out_dir) / "tokenizer.json"))
    return Path(out_dir)


def save_tiny_base(family: str, out_dir: Path, frames: int = 4, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random base of `family` in out_dir (config.json, model.safetensors, tokenizer.json,
    preprocessor_config.json), loadable with from_pretrained(out_dir)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, XCLIPConfig, XCLIPModel, XCLIPTextConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vision = dict(image_size=image_size, patch_size=8, **TINY)
    if family == "clip":
        config = CLIPConfig(text_config=tiny_text_config(CLIPTextConfig).to_dict(), vision_config=vision,
                            projection_dim=64)
        CLIPModel(config).save_pretrained(str(out_dir))
    elif family == "xclip":
        xvision = dict(vision, num_frames=frames, mit_hidden_size=64, mit_intermediate_size=128,
                       mit_num_attention_heads=4)
        config = XCLIPConfig(text_config=tiny_text_config(XCLIPTextConfig).to_dict(), vision_config=xvision,
                             projection_dim=64, prompt_layers=1, prompt_num_attention_heads=4)
        XCLIPModel(config).save_pretrained(str(out_dir))
    elif family == "dual-encoder":
        parts = out_dir.parent / f".{out_dir.name}-towers"
        save_tiny_vision(parts / "vision", image_size, seed)
        save_tiny_text(parts / "text", seed)
        compose_dual_encoder(parts / "vision", parts / "text", out_dir, seed=seed)
        shutil.rmtree(parts)
        return out_dir
    else:
        raise RecipeError(f"model.family {family!r} is not known; choose clip, xclip or dual-encoder")
    build_tokenizer().save(str(out_dir / "tokenizer.json"))
    write_processor(out_dir, image_size, image_size + image_size // 8)
    (out_dir / "vqtool_tiny.json").write_text(json.dumps({"family": family, "seed": seed}))
    return out_dir
