"""Tests for merging: the merged float32 model equals the as-trained 4-bit model with its adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from export.merge import load_run, merge_static_adapters
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout
from toolchain.data.video import decode_video
from toolchain.errors import VqtoolError
from toolchain.models.build import base_info, load_clip
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import AdaptersSection

K = 4
CAPTIONS = ["a red circle moves left", "a blue square moves up", "a yellow triangle moves down", "an object"]


def wrap(clip, info) -> VideoCLIP:
    return VideoCLIP(clip, K, "uniform", info.image_size, info.mean, info.std).eval()


def clips_for_test(shapes_data) -> list[torch.Tensor]:
    files = sorted((shapes_data / "videos").glob("eval_*.mp4"))[:3]
    decoded = [torch.from_numpy(decode_video(f, 64)) for f in files]
    gen = torch.Generator().manual_seed(0)
    decoded.append(torch.randint(0, 256, (3, 41, 67, 3), dtype=torch.uint8, generator=gen))
    return decoded


@torch.no_grad()
def outputs(model: VideoCLIP, clips, info) -> tuple[np.ndarray, np.ndarray]:
    from export.tokenize import encode_texts, load_tokenizer

    video = torch.cat([model.encode_frames(c[None])[0] for c in clips]).numpy()
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), CAPTIONS)
    text = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return video, text


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.fixture(scope="module")
def info():
    return base_info("tiny-video-clip")


def test_merged_equals_as_trained(merged, shapes_data):
    trained, merged_model, recipe, info = merged
    clips = clips_for_test(shapes_data)
    tv, tt = outputs(trained, clips, info)
    mv, mt = outputs(merged_model, clips, info)
    assert max_diff(tv, mv) < 1e-4
    assert max_diff(tt, mt) < 1e-4
    # Same frames chosen, and embeddings are unit vectors.
    assert np.allclose(np.linalg.norm(mv, axis=1), 1.0, atol=1e-5)
    for c in clips:
        assert torch.equal(trained.encode_frames(c[None])[1], merged_model.encode_frames(c[None])[1])


def test_merged_model_is_plain_float32(merged):
    _, merged_model, _, _ = merged
    from peft.tuners.lora import LoraLayer

    kinds = {type(m).__name__ for m in merged_model.modules()}
    assert not kinds & {"Linear4bit", "Linear8bitLt"}
    assert not any(isinstance(m, LoraLayer) for m in merged_model.modules())
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert all(p.dtype == torch.float32 for p in merged_model.parameters())
    assert not getattr(merged_model.clip, "is_quantized", False)


def test_trained_adapter_is_not_zero(tiny_run):
    weights = load_file(str(tiny_run / "adapter" / "adapter_model.safetensors"))
    b_norms = [float(t.abs().max()) for name, t in weights.items() if "lora_B" in name]
    assert b_norms, "no lora_B weights in the saved adapter"
    assert max(b_norms) > 0, "training left every lora_B at zero: the adapter does nothing"


def randomize_lora_b(model, scale: float = 0.05) -> int:
    gen = torch.Generator().manual_seed(1)
    n = 0
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * scale
            n += 1
    return n


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_merging_a_nonzero_lora_changes_the_base_and_keeps_the_adapted_output(quantization, info, shapes_data):
    clips = clips_for_test(shapes_data)[:2]
    adapters = AdaptersSection(quantization=quantization, target_modules="all-linear")
    base = load_clip(info.path, bnb_config(adapters))
    keep_training_layout(base)
    base_v, base_t = outputs(wrap(base, info), clips, info)

    peft = add_lora(load_clip(info.path, bnb_config(adapters)), adapters)
    keep_training_layout(peft)
    assert randomize_lora_b(peft) > 0
    adapted_v, adapted_t = outputs(wrap(peft, info), clips, info)
    merged_v, merged_t = outputs(wrap(merge_static_adapters(peft), info), clips, info)

    # The adapter matters (so this test can fail) ...
    assert max_diff(base_v, adapted_v) > 1e-2 and max_diff(base_t, adapted_t) > 1e-2
    # ... and merging it keeps exactly what the adapted model computes.
    assert max_diff(adapted_v, merged_v) < 1e-4
    assert max_diff(adapted_t, merged_t) < 1e-4


def test_zero_lora_merges_to_the_base(info, shapes_data):
    clips = clips_for_test(shapes_data)[:1]
    adapters = AdaptersSection(quantization="none", target_modules=["q_proj", "v_proj"])
    base_v, base_t = outputs(wrap(load_clip(info.path), info), clips, info)
    merged = merge_static_adapters(add_lora(load_clip(info.path), adapters))  # fresh LoRA: B = 0
    merged_v, merged_t = outputs(wrap(merged, info), clips, info)
    assert max_diff(base_v, merged_v) < 1e-5 and max_diff(base_t, merged_t) < 1e-5


def test_load_run_needs_a_finished_run(tmp_path):
    with pytest.raises(VqtoolError) as exc:
        load_run(tmp_path)
    assert "recipe.yaml" in str(exc.value) and "vqtool finetune" in str(exc.value)


def test_trained_adapter_moves_the_output_beyond_the_merge_tolerance(merged, info, shapes_data):
    """Otherwise `test_merged_equals_as_trained` could pass with the adapter silently dropped."""
    trained, _, recipe, _ = merged
    clips = clips_for_test(shapes_data)
    base = load_clip(info.path, bnb_config(recipe.adapters))
    keep_training_layout(base)
    base_v, base_t = outputs(wrap(base, info), clips, info)
    tv, tt = outputs(trained, clips, info)
    assert max_diff(base_v, tv) > 1e-3 and max_diff(base_t, tt) > 1e-3
