"""Base model builders: resolve a name or path, load it (optionally 4-bit) and wrap it for video."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import RecipeError
from toolchain.heap import release_free_heap
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD, RESAMPLE
from toolchain.models.tiny import BUILTINS, MAX_TEXT_LEN


@dataclass(frozen=True)
class BaseInfo:
    """Everything about a base checkpoint that export and runtime need besides the weights."""

    path: str
    tokenizer: Path
    image_size: int
    mean: tuple
    std: tuple
    max_text_len: int
    family: str = "clip"
    resize_shortest: int | None = None  # the processor's shortest-edge resize; 0: no crop (squash)
    rescale: float = 1 / 255
    num_frames: int | None = None  # xclip: the only frame count its position embedding accepts
    resample: str = "bicubic"  # the processor's resize filter


def resolve_base(name_or_path: str) -> str:
    if name_or_path in BUILTINS:
        folder, script = BUILTINS[name_or_path]
        if not (folder / "model.safetensors").is_file():
            raise RecipeError(f"the built-in base {name_or_path} is missing from {folder}; rebuild it with: python {script}")
        return str(folder)
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
            f"model.name_or_path: {repo_id!r} is not a built-in base ({', '.join(BUILTINS)}) nor a local directory, and fetching "
            f"it from the hub failed: {hub_failure(exc)} ({type(exc).__name__}). Download it where you have "
            "network (huggingface-cli download ORG/MODEL --local-dir DIR) and set model.name_or_path to DIR."
        ) from None


def hub_failure(exc: Exception) -> str:
    """What went wrong, in words: no access, no such repo, or no network (or HF_HUB_OFFLINE)."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    if "GatedRepoError" in kinds:
        return "the model is gated: accept its terms on the hub and log in"
    if "RepositoryNotFoundError" in kinds:
        return "no such model on the hub, or it needs a login"
    if kinds & {"LocalEntryNotFoundError", "ConnectionError", "TimeoutError", "ConnectError", "ProxyError"}:
        return "could not reach the hub (no network, or HF_HUB_OFFLINE is set) and there is no cached copy"
    return (str(exc).splitlines() or ["unknown error"])[0][:200]


MODEL_TYPES = {"clip": "clip", "xclip": "xclip", "dual-encoder": "vision-text-dual-encoder",
               "video-llm": "llava_onevision"}
MAX_TEXT_LEN_CAP = 77  # CLIP's context; a BERT text tower allows 512, which only pads every caption


def base_info(name_or_path: str, family: str = "clip") -> BaseInfo:
    path = resolve_base(name_or_path)
    local = Path(path)
    tok = local / "tokenizer.json"
    if not tok.is_file():
        raise RecipeError(f"model.name_or_path: {local} has no tokenizer.json (a `tokenizers` file is required)")
    config = json.loads((local / "config.json").read_text())
    check_family(config, family, local)
    size = config.get("vision_config", {}).get("image_size", 224)
    proc = processor_constants(local, size)
    max_len = config.get("text_config", {}).get("max_position_embeddings", MAX_TEXT_LEN)
    max_len = max_len if family == "video-llm" else min(max_len, MAX_TEXT_LEN_CAP)  # a decoder's context is not padded
    frames = config.get("vision_config", {}).get("num_frames") if family == "xclip" else None
    return BaseInfo(path, tok, size, proc["mean"], proc["std"], max_len, family,
                    proc["resize_shortest"], proc["rescale"], frames, proc["resample"])


def check_family(config: dict, family: str, local: Path) -> None:
    found = config.get("model_type")
    if found != MODEL_TYPES[family]:
        names = {v: k for k, v in MODEL_TYPES.items()}
        hint = f"set model.family: {names[found]}" if found in names else "use a clip, xclip, dual-encoder or llava_onevision checkpoint"
        raise RecipeError(f"model.family is {family}, but {local}/config.json has model_type {found!r}; {hint}")


def processor_constants(local: Path, image_size: int) -> dict:
    """The checkpoint's own preprocessing (preprocessor_config.json); CLIP's when the file is absent."""
    out = {"mean": CLIP_MEAN, "std": CLIP_STD, "resize_shortest": None, "rescale": 1 / 255, "resample": "bicubic"}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        if (local / name).is_file():
            p = json.loads((local / name).read_text())
            break
    else:
        return out
    crop, size = _edge(p.get("crop_size")), p.get("size")
    if crop is not None and crop != image_size:
        raise RecipeError(f"{local}/{name}: crop_size {crop} differs from the vision tower's image_size {image_size}")
    if isinstance(size, dict) and "shortest_edge" in size and p.get("do_center_crop", True):
        out["resize_shortest"] = int(size["shortest_edge"])
    elif isinstance(size, int) and p.get("do_center_crop", True):
        out["resize_shortest"] = size
    elif isinstance(size, dict) and size.get("height") == size.get("width") == image_size:
        out["resize_shortest"] = 0  # resize the whole frame to image_size x image_size (ViT)
    else:
        raise RecipeError(f"{local}/{name}: size {size} with do_center_crop={p.get('do_center_crop')} is not "
                          "a preprocessing vqtool reproduces (shortest-edge resize + centre crop, or a square resize)")
    # PIL filter ids: 2 bilinear, 3 bicubic; others (lanczos, nearest...) get bicubic, the closest we export
    out["resample"] = RESAMPLE.get(p.get("resample", 3), "bicubic")
    out["mean"] = tuple(p.get("image_mean", CLIP_MEAN))
    out["std"] = tuple(p.get("image_std", CLIP_STD))
    out["rescale"] = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    return out


def _edge(crop) -> int | None:
    if crop is None:
        return None
    if isinstance(crop, int):
        return crop
    if crop.get("height") != crop.get("width"):
        raise RecipeError(f"crop_size {crop} is not square; vqtool's graphs take square crops")
    return int(crop["height"])


def base_class(family: str):
    import transformers

    names = {"clip": "CLIPModel", "xclip": "XCLIPModel", "dual-encoder": "VisionTextDualEncoderModel",
             "video-llm": "LlavaOnevisionForConditionalGeneration"}
    return getattr(transformers, names[family])


def load_base(info: BaseInfo, quantization_config=None, device: str = "cpu"):
    """Load the family's model in full precision, or with bitsandbytes-quantized linears."""
    return load_pretrained(base_class(info.family), info.path, quantization_config, device)


def load_clip(path: str, quantization_config=None, device: str = "cpu"):
    """Load a CLIPModel in full precision, or with bitsandbytes-quantized linears."""
    return load_pretrained(base_class("clip"), path, quantization_config, device)


def load_pretrained(cls, path: str, quantization_config, device: str):
    if quantization_config is None:
        return cls.from_pretrained(path).to(device)
    model = cls.from_pretrained(path, quantization_config=quantization_config, device_map=device)
    release_checkpoint_map(model)
    release_free_heap()  # the fp32 copies quantization read and dropped
    return model


def is_quantized(t) -> bool:
    """A bitsandbytes weight (4-bit keeps a quant_state, LLM.int8 an SCB); it owns its memory already."""
    return getattr(t, "quant_state", None) is not None or getattr(t, "SCB", None) is not None


def release_checkpoint_map(model) -> int:
    """Copy the CPU tensors that were not quantized out of the checkpoint's memory map; returns bytes copied.

    transformers leaves them as views of the mmapped .safetensors file, which keeps the whole map
    alive, including the fp32 pages of every weight that was quantized: read once, never again, yet
    resident in the process (~570 MB for ViT-B/32). Owning the small rest (embeddings, norms,
    biases) lets the map close. Parameter objects stay the same, so ties and references hold.
    """
    copied = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu" and not is_quantized(t):
            t.data = t.data.clone()
            copied += t.numel() * t.element_size()
    return copied
