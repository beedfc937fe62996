"""4-bit is what trains: the model each `adapters.quantization` fine-tunes holds the layers it says
(NF4/FP4 Linear4bit with the recipe's double quant and compute dtype, LLM.int8 Linear8bitLt, plain
Linear for none), and each is fine-tuned and exported end to end through its parity gate."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHIPPED_RECIPE, TINY_OVERRIDES, data_overrides
from toolchain.adapters.qlora import bnb_config
from toolchain.models.video_clip import VideoCLIP
from toolchain.progress import Reporter
from toolchain.recipe import AdaptersSection, load_recipe

QUANTIZATIONS = ("nf4", "fp4", "int8", "none")


def base_layers(model: VideoCLIP) -> dict:
    """LoRA layer name -> the frozen base layer it wraps."""
    from peft.tuners.lora import LoraLayer

    return {n: m.get_base_layer() for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def kept_in_full_precision(model: VideoCLIP) -> set[str]:
    """Layers transformers leaves unquantized on purpose (CLIP: text_projection), by leaf name."""
    quantizer = getattr(model.clip.get_base_model(), "hf_quantizer", None)
    return set(quantizer.modules_to_not_convert or []) if quantizer is not None else set()


def assert_layers_as_the_recipe_says(model: VideoCLIP, a: AdaptersSection) -> None:
    import bitsandbytes as bnb

    bases = base_layers(model)
    assert len(bases) >= 40, f"LoRA found on only {len(bases)} layers"
    full = kept_in_full_precision(model)
    if a.quantization == "none":
        assert not full
    else:
        assert len(full) <= 2, full  # a quantized base keeps at most its projection head in fp32
    quantized = 0
    for name, layer in bases.items():
        if name.rsplit(".", 1)[-1] in full:
            assert type(layer) is torch.nn.Linear, (name, type(layer))
            continue
        if a.quantization in ("nf4", "fp4"):
            assert type(layer) is bnb.nn.Linear4bit, (name, type(layer))
            state = layer.weight.quant_state
            assert layer.weight.dtype == torch.uint8 and state.quant_type == a.quantization, name
            assert state.nested is a.double_quant, (name, state.nested)
            assert layer.compute_dtype == getattr(torch, a.compute_dtype), (name, layer.compute_dtype)
        elif a.quantization == "int8":
            assert type(layer) is bnb.nn.Linear8bitLt, (name, type(layer))
            scales = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB  # moved on first forward
            assert layer.weight.dtype == torch.int8 and scales is not None and scales.numel() == layer.out_features, name
        else:
            assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32, (name, type(layer))
        quantized += a.quantization != "none"
    if a.quantization != "none":
        assert quantized >= len(bases) - len(full) >= 40
    else:
        assert not any("bitsandbytes" in type(m).__module__ for m in model.modules())


@pytest.mark.parametrize("quantization,double_quant,dtype", [
    ("nf4", True, "float32"), ("nf4", False, "bfloat16"), ("fp4", True, "float16"), ("fp4", False, "float32"),
])
def test_bnb_config_carries_every_4bit_field_of_the_recipe(quantization, double_quant, dtype):
    cfg = bnb_config(AdaptersSection(quantization=quantization, double_quant=double_quant, compute_dtype=dtype))
    assert cfg.load_in_4bit and not cfg.load_in_8bit
    assert cfg.bnb_4bit_quant_type == quantization
    assert cfg.bnb_4bit_use_double_quant is double_quant
    assert cfg.bnb_4bit_compute_dtype == getattr(torch, dtype)


def test_bnb_config_for_int8_and_none():
    cfg = bnb_config(AdaptersSection(quantization="int8"))
    assert cfg.load_in_8bit and not cfg.load_in_4bit
    assert bnb_config(AdaptersSection(quantization="none")) is None


@pytest.mark.parametrize("quantization,double_quant,dtype", [
    ("nf4", True, "float32"), ("nf4", False, "bfloat16"), ("fp4", False, "float16"), ("int8", True, "float32"),
    ("none", True, "float32"),
])
def test_the_trainable_model_holds_the_recipes_layers(tiny_recipe, quantization, double_quant, dtype):
    from toolchain.models.assemble import build_trainable, model_info

    recipe = tiny_recipe.model_copy(deep=True)
    recipe.adapters.quantization, recipe.adapters.double_quant = quantization, double_quant
    recipe.adapters.compute_dtype = dtype
    assert_layers_as_the_recipe_says(build_trainable(recipe, model_info(recipe), "cpu"), recipe.adapters)


# --- each quantization fine-tuned (the model that really trained is inspected) and exported --------


@pytest.fixture(scope="module")
def eight_eval_clips(shapes_data, tmp_path_factory):
    """shapes_data's 12 training clips and 8 of its 48 eval clips: a quick eval and parity set."""
    out = tmp_path_factory.mktemp("q-data")
    for split, n in (("train", None), ("eval", 8)):
        rows = [json.loads(line) for line in (shapes_data / f"{split}.jsonl").read_text().splitlines()[:n]]
        out.joinpath(f"{split}.jsonl").write_text(
            "".join(json.dumps({**r, "video": str(shapes_data / r["video"])}) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module", params=QUANTIZATIONS)
def quant_run(request, eight_eval_clips, tmp_path_factory):
    """(recipe, the VideoCLIP that ran the training forward passes, eval.json, parity.json, export dir)."""
    from export.pipeline import export_run
    from toolchain.train import finetune

    quantization = request.param
    extra = ["adapters.double_quant=false"] if quantization == "fp4" else []  # a non-default the build must honour
    recipe = load_recipe(SHIPPED_RECIPE, [*TINY_OVERRIDES, *data_overrides(eight_eval_clips), "export.variants=[fp32]",
                                          f"adapters.quantization={quantization}", "train.checkpoint_every=0", *extra])
    trained: list[VideoCLIP] = []
    real = VideoCLIP.encode_video_parts  # what the contrastive loss calls (encode_pixels is its normalised part)

    def spy(self, pixels, motion):
        if self.training and torch.is_grad_enabled() and all(m is not self for m in trained):
            trained.append(self)
        return real(self, pixels, motion)

    tmp = tmp_path_factory.mktemp(f"q-{quantization}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoCLIP, "encode_video_parts", spy)
        result = finetune(recipe, tmp / "run", False, Reporter(quiet=True))
    parity = export_run(tmp / "run", tmp / "export", False, None, Reporter(quiet=True))
    return recipe, trained, result, parity, tmp / "export"


@pytest.mark.slow
def test_the_model_that_trained_holds_the_recipes_layers(quant_run):
    recipe, trained, result, _, _ = quant_run
    assert len(trained) == 1, "exactly one model ran the training steps"
    assert_layers_as_the_recipe_says(trained[0], recipe.adapters)
    assert result["steps"] == recipe.train.max_steps


@pytest.mark.slow
def test_each_quantization_exports_through_its_parity_gate(quant_run):
    recipe, _, _, parity, export_dir = quant_run
    fp32 = parity["variants"]["fp32"]
    assert parity["passed"] and fp32["passed"], fp32["failures"]
    # LLM.int8 also quantizes activations as it runs: measured max abs 0.0015 (cosine 0.99998) against the
    # fp32 graph; the dequantize-and-merge of nf4 / fp4 / none stays far below 1e-3.
    max_abs = 5e-3 if recipe.adapters.quantization == "int8" else 1e-3
    for ref in (fp32, fp32["vs_merged"]):  # against the as-trained quantized model and the merged fp32 one
        for out in ("video", "text"):
            assert ref[out]["min_cosine"] >= 0.9999 and ref[out]["max_abs_diff"] < max_abs, (out, ref[out])
        assert ref["video"]["frame_index_agreement"] == 1.0
    # The merge dequantizes exactly as trained: merged fp32 PyTorch equals the quantized model it came from.
    assert parity["merged_vs_trained"]["min_cosine"] >= 0.9999, parity["merged_vs_trained"]
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["source"]["quantization"] == recipe.adapters.quantization
