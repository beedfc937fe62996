"""Temporal-aware LoRA: equals plain LoRA at init, sees frame order, saves/loads, merges to a side branch."""

from __future__ import annotations

import json

import pytest
import torch

from export.merge import merge_static_adapters
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout
from toolchain.adapters.temporal import (
    TemporalSideBranch, attach_temporal, branch_cost, init_kernel, load_temporal, plain_lora_view, save_temporal,
    temporal_targets,
)
from toolchain.errors import RecipeError, VqtoolError
from toolchain.models.build import base_info, load_clip
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import AdaptersSection, TemporalSection, validate_recipe

K = 4


@pytest.fixture(scope="module")
def info():
    return base_info("tiny-video-clip")


def lora_model(info, quantization: str, seed: int = 0) -> VideoCLIP:
    """Base (fp32 or NF4) + LoRA on all linears, with a random non-zero B so LoRA changes outputs."""
    torch.manual_seed(seed)
    a = AdaptersSection(quantization=quantization, target_modules="all-linear")
    clip = load_clip(info.path, bnb_config(a))
    keep_training_layout(clip)
    peft = add_lora(clip, a)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return VideoCLIP(peft, K, "uniform", info.image_size, info.mean, info.std).eval()


def clip_frames(seed: int = 1, n: int = K) -> torch.Tensor:
    """A clip of exactly K frames, so the selector keeps all of them and reversal reverses the bag."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, n, 40, 56, 3), dtype=torch.uint8, generator=g)


def perturb_temporal(model: VideoCLIP, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if "temporal_params" in name:
            p.data += scale * torch.randn(p.shape, generator=g)


@torch.no_grad()
def video_embed(model: VideoCLIP, frames: torch.Tensor) -> torch.Tensor:
    return model.encode_frames(frames)[0]


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_temporal_lora_equals_plain_lora_at_init(info, quantization):
    model = lora_model(info, quantization)
    frames = clip_frames()
    plain = video_embed(model, frames)
    names = attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    assert names and all("vision_model" in n for n in names)
    assert torch.allclose(video_embed(model, frames), plain, atol=1e-6)
    perturb_temporal(model)
    assert not torch.allclose(video_embed(model, frames), plain, atol=1e-3)  # the branch is live


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_reversal_changes_temporal_but_not_mean_pooled_plain_lora(info, quantization):
    model = lora_model(info, quantization)
    frames = clip_frames()
    fwd, rev = video_embed(model, frames), video_embed(model, frames.flip(1))
    assert torch.allclose(fwd, rev, atol=1e-5), "mean pooling over the same frames must ignore their order"
    attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    perturb_temporal(model)
    fwd, rev = video_embed(model, frames), video_embed(model, frames.flip(1))
    assert (fwd - rev).abs().max().item() > 1e-3, "the temporal model must see the frame order"


def test_text_tower_keeps_plain_lora(info):
    model = lora_model(info, "none")
    attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    text_layers = [n for n, m in model.clip.named_modules() if "text_model" in n and hasattr(m, "temporal_params")]
    assert text_layers == []


def test_layer_selection(info):
    model = lora_model(info, "none")
    only0 = temporal_targets(model.clip, [0])
    assert only0 and all(".layers.0." in n for n in only0)
    with pytest.raises(VqtoolError, match="adapters.temporal.layers"):
        attach_temporal(model.clip, TemporalSection(enabled=True, layers=[99]), K, model.temporal)


@pytest.mark.parametrize("gate", ["motion", "position", "both", "none"])
def test_save_and_load_round_trip(info, tmp_path, gate):
    cfg = TemporalSection(enabled=True, gate=gate)
    trained = lora_model(info, "nf4", seed=0)
    attach_temporal(trained.clip, cfg, K, trained.temporal)
    perturb_temporal(trained)
    with plain_lora_view(trained.clip):
        trained.clip.save_pretrained(str(tmp_path))
    save_temporal(trained.clip, tmp_path, cfg, K)
    # PEFT's own file holds only plain LoRA tensors; the temporal ones sit beside it
    from safetensors.torch import load_file

    assert not any("temporal" in k for k in load_file(str(tmp_path / "adapter_model.safetensors")))
    assert json.loads((tmp_path / "temporal.json").read_text())["gate"] == gate

    from peft import PeftModel

    fresh_clip = load_clip(info.path, bnb_config(AdaptersSection(quantization="nf4")))
    keep_training_layout(fresh_clip)
    fresh = VideoCLIP(PeftModel.from_pretrained(fresh_clip, str(tmp_path)), K, "uniform",
                      info.image_size, info.mean, info.std).eval()
    frames = clip_frames(n=9)
    assert not torch.allclose(video_embed(fresh, frames), video_embed(trained, frames), atol=1e-4)
    load_temporal(fresh.clip, tmp_path, cfg, K, fresh.temporal)
    assert torch.allclose(video_embed(fresh, frames), video_embed(trained, frames), atol=1e-5)


@pytest.mark.parametrize("gate,parts", [("motion", {"conv", "motion"}), ("position", {"conv", "position"}),
                                        ("both", {"conv", "motion", "position"}), ("none", {"conv"})])
def test_each_gate_creates_only_the_parameters_it_trains(info, gate, parts):
    """No trainable parameter outside the loss: every temporal parameter gets a gradient."""
    from toolchain.adapters.ranks import temporal_extra
    from toolchain.adapters.groups import linear_layers

    cfg = TemporalSection(enabled=True, gate=gate)
    model = lora_model(info, "none")
    names = attach_temporal(model.clip, cfg, K, model.temporal)
    params = {n: p for n, p in model.named_parameters() if "temporal_params" in n}
    assert {n.rsplit(".", 1)[1] for n in params} == parts
    motion = torch.rand(2, K)
    model.encode_pixels(torch.randn(2, K, 3, info.image_size, info.image_size), motion).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values()), gate
    rank = AdaptersSection().rank  # every layer has the recipe's rank here
    extra = temporal_extra(linear_layers(model.clip, "all-linear"), cfg, K)  # what rank budgets count
    assert len(extra) == len(names) and sum(extra.values()) * rank == sum(p.numel() for p in params.values())


def test_missing_temporal_file_is_a_clear_error(info, tmp_path):
    model = lora_model(info, "none")
    with pytest.raises(VqtoolError, match="temporal.safetensors"):
        load_temporal(model.clip, tmp_path, TemporalSection(enabled=True), K, model.temporal)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_merge_keeps_the_temporal_branch_and_the_outputs(info, quantization):
    model = lora_model(info, quantization)
    attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    perturb_temporal(model, 0.3)
    frames = clip_frames(n=13)
    before = video_embed(model, frames)
    merged_clip = merge_static_adapters(model.clip)
    branches = [m for m in merged_clip.modules() if isinstance(m, TemporalSideBranch)]
    assert branches
    merged = VideoCLIP(merged_clip, K, "uniform", info.image_size, info.mean, info.std).eval()
    assert torch.allclose(video_embed(merged, frames), before, atol=1e-4)
    cost = branch_cost(merged_clip, tokens=17)
    assert cost["branch_params"] > 0 and 0 < cost["branch_flop_share"] < 0.5


def test_peft_in_place_merge_is_refused(info):
    model = lora_model(info, "none")
    attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    with pytest.raises(VqtoolError, match="vqtool export"):
        model.clip.merge_and_unload()


def test_temporal_layer_outside_a_video_forward_is_an_error(info):
    model = lora_model(info, "none")
    attach_temporal(model.clip, TemporalSection(enabled=True), K, model.temporal)
    with pytest.raises(VqtoolError, match="outside a video forward"):
        model.clip.get_image_features(pixel_values=torch.zeros(K, 3, info.image_size, info.image_size))


def test_recipe_checks_temporal_keys():
    with pytest.raises(RecipeError, match="odd"):
        validate_recipe({"adapters": {"temporal": {"kernel": 4}}})
    with pytest.raises(RecipeError, match="motion"):
        validate_recipe({"adapters": {"temporal": {"gate": "speed"}}})
    ok = validate_recipe({"adapters": {"temporal": {"enabled": True, "layers": [0, 2]}}})
    assert ok.adapters.temporal.layers == [0, 2]


def test_exported_temporal_model_reports_its_branch(tiny_export, tiny_recipe):
    assert tiny_recipe.adapters.temporal.enabled  # the shipped recipe uses temporal adapters
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    t = manifest["temporal"]
    assert t["enabled"] and t["branch_params"] > 0 and 0 < t["branch_flop_share"] < 0.25
    parity = json.loads((tiny_export / "parity.json").read_text())
    assert parity["variants"]["fp32"]["video"]["min_cosine"] >= 0.9999
    assert parity["variants"]["int8"]["video"]["min_cosine"] >= 0.99


def test_difference_init_sees_the_frame_order_from_the_start(info):
    """init: difference starts every second channel as identity + (h[k+1] − h[k−1]) / 2, so a
    non-zero B already makes the clip's embedding depend on the frame order; identity does not."""
    conv = init_kernel(4, 3, "difference")
    assert conv.tolist() == [[0, 1, 0], [-0.5, 1, 0.5], [0, 1, 0], [-0.5, 1, 0.5]]
    assert torch.equal(init_kernel(4, 1, "difference"), torch.ones(4, 1))
    frames = clip_frames()
    for init, sees_order in (("identity", False), ("difference", True)):
        model = lora_model(info, "none")
        attach_temporal(model.clip, TemporalSection(enabled=True, init=init), K, model.temporal)
        gap = (video_embed(model, frames) - video_embed(model, frames.flip(1))).abs().max().item()
        assert (gap > 1e-3) == sees_order, (init, gap)
