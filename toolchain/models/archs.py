"""Named architectures with random weights, for speed and memory benchmarks (values don't matter there)."""

from __future__ import annotations

from toolchain.errors import VqtoolError
from toolchain.models.build import base_info
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
from toolchain.models.video_clip import VideoCLIP

ARCHS = ("tiny", "clip-vit-b32")


def build_arch(name: str, k: int, selector: str = "uniform") -> VideoCLIP:
    """`tiny`: the built-in base (real weights); `clip-vit-b32`: CLIP ViT-B/32 from its config, random weights."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    if name == "tiny":
        info = base_info("tiny-video-clip")
        clip = CLIPModel.from_pretrained(info.path)
        return VideoCLIP(clip, k, selector, info.image_size, info.mean, info.std).eval()
    if name == "clip-vit-b32":
        torch.manual_seed(0)
        config = CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's architecture
        clip = CLIPModel(config)
        return VideoCLIP(clip, k, selector, config.vision_config.image_size, CLIP_MEAN, CLIP_STD).eval()
    raise VqtoolError(f"--arch {name!r} is not known; choose one of {', '.join(ARCHS)}")
