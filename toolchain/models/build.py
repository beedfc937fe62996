"""Base model builders: resolve a name or path, load it (optionally 4-bit) and wrap it for video."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import RecipeError
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
from toolchain.models.tiny import BUILTIN_DIR, BUILTIN_NAME, MAX_TEXT_LEN


@dataclass(frozen=True)
class BaseInfo:
    """Everything about a base checkpoint that export and runtime need besides the weights."""

    path: str
    tokenizer: Path
    image_size: int
    mean: tuple
    std: tuple
    max_text_len: int


def resolve_base(name_or_path: str) -> str:
    if name_or_path == BUILTIN_NAME:
        if not (BUILTIN_DIR / "model.safetensors").is_file():
            raise RecipeError(
                f"the built-in base {BUILTIN_NAME} is missing from {BUILTIN_DIR}; "
                "rebuild it with: python scripts/make_tiny_base.py"
            )
        return str(BUILTIN_DIR)
    if Path(name_or_path).is_dir():
        return name_or_path
    return download_base(name_or_path)


def download_base(repo_id: str) -> str:
    """A hub id: fetch (or reuse the cached) snapshot, so everything after works on a local dir."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise RecipeError(
            f"model.name_or_path: {repo_id!r} is not '{BUILTIN_NAME}' nor a local directory, and fetching "
            f"it from the hub failed ({type(exc).__name__}). Download it where you have network "
            "(huggingface-cli download ORG/MODEL --local-dir DIR) and set model.name_or_path to DIR."
        ) from None


def base_info(name_or_path: str) -> BaseInfo:
    path = resolve_base(name_or_path)
    local = Path(path)
    tok = local / "tokenizer.json"
    if not tok.is_file():
        raise RecipeError(f"model.name_or_path: {local} has no tokenizer.json (a `tokenizers` file is required)")
    config = json.loads((local / "config.json").read_text())
    size = config.get("vision_config", {}).get("image_size", 224)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = local / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    max_len = config.get("text_config", {}).get("max_position_embeddings", MAX_TEXT_LEN)
    return BaseInfo(path, tok, size, tuple(mean), tuple(std), max_len)


def load_clip(path: str, quantization_config=None, device: str = "cpu"):
    """Load a CLIPModel in full precision, or with bitsandbytes-quantized linears."""
    from transformers import CLIPModel

    if quantization_config is None:
        return CLIPModel.from_pretrained(path).to(device)
    return CLIPModel.from_pretrained(path, quantization_config=quantization_config, device_map=device)
