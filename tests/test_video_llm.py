"""The video-llm family: a LlavaOnevision dir built from a tiny config loads by path; prompts, the
placeholder merge, greedy generation, temporal adapters over folded frames, groups and 4-bit choices."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer

from toolchain.adapters.groups import group_summary, linear_layers
from toolchain.adapters.qlora import add_lora, trainable_parameters
from toolchain.adapters.temporal import attach_temporal
from toolchain.errors import RecipeError
from toolchain.models.build import base_info, load_base
from toolchain.models.compose_llm import save_tiny_video_llm
from toolchain.models.prompt import IGNORE, decode_answer, pad_left, pad_right, prompt_ids, training_example
from toolchain.models.video_llm import VideoLLM, greedy_generate, merge_video_tokens
from toolchain.recipe import AdaptersSection, validate_recipe

K = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_video_llm(tmp_path_factory.mktemp("tinyllm") / "base")


@pytest.fixture(scope="module")
def info(base):
    return base_info(str(base), "video-llm")


def wrap(vlm, info, k: int = K) -> VideoLLM:
    return VideoLLM(vlm, k, "uniform", info.image_size, info.mean, info.std, info.resize_shortest)


def lora(info, quantization="none", temporal=False, seed=0) -> VideoLLM:
    torch.manual_seed(seed)
    a = AdaptersSection(quantization=quantization, target_modules="all-linear")
    from toolchain.adapters.qlora import bnb_config, keep_training_layout

    vlm = load_base(info, bnb_config(a))
    keep_training_layout(vlm)
    model = wrap(add_lora(vlm, a), info)
    if temporal:
        attach_temporal(model.core, a.temporal, K, model.temporal)
    for name, p in model.named_parameters():
        if "lora_B" in name or "temporal_params" in name:
            p.data += 0.3 * torch.randn(p.shape)
    return model.eval()


def frames(seed=1, n=K, b=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, 40, 56, 3), dtype=torch.uint8, generator=g)


def test_a_local_dir_from_a_tiny_config_loads_by_path(base, info):
    from transformers import LlavaOnevisionForConditionalGeneration

    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "llava_onevision" and config["text_config"]["model_type"] == "llama"
    assert info.family == "video-llm" and info.image_size == 32
    vlm = LlavaOnevisionForConditionalGeneration.from_pretrained(str(base))
    tokens, idx = wrap(vlm, info).encode_frames(frames(n=9))
    # 4 frames x (32/8 patches per side, pooled 2x2 -> 2x2) + image_newline
    assert tokens.shape == (1, K * 4 + 1, vlm.config.text_config.hidden_size) and idx.shape == (1, K)
    with pytest.raises(RecipeError, match="model.family is clip, but .* has model_type 'llava_onevision'; set model.family: video-llm"):
        base_info(str(base), "clip")


def test_prompt_ids_labels_and_padding(base):
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    from toolchain.models.prompt import PromptFormat

    fmt = PromptFormat("{video} question : {question} answer :", tok.token_to_id("<video>"), 5, 3, 0)
    ids, labels = training_example(tok, fmt, "Left", "which way does it move ?")
    prompt = prompt_ids(tok, fmt, "which way does it move ?")
    assert ids[:5] == [fmt.video_token_id] * 5 and ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert ids[len(prompt):] == labels[len(prompt):] == [tok.token_to_id("left"), 3]
    assert decode_answer(tok, ids[len(prompt):] + [7, 7], 3) == "left"
    right_ids, mask, lab = pad_right([ids, ids[:-3]], [labels, labels[:-3]], 0)
    assert mask.sum(1).tolist() == [len(ids), len(ids) - 3] and (lab[1, -3:] == IGNORE).all()
    left_ids, left_mask = pad_left([ids, ids[:-3]], 0)
    assert left_ids[1, 3:].tolist() == ids[:-3] and left_mask[1, :3].tolist() == [0, 0, 0]


def test_merge_puts_each_rows_video_tokens_at_its_placeholders():
    vid, d = 9, 3
    ids = torch.tensor([[0, 0, 9, 9, 5], [9, 9, 6, 7, 8]])  # left padding shifts the first row
    embeds = torch.randn(2, 5, d)
    features = torch.arange(4 * d, dtype=torch.float32).reshape(4, d)  # rows 0, 1: video 0; rows 2, 3: video 1
    out = merge_video_tokens(embeds, ids, features, vid)
    reference = embeds.masked_scatter((ids == vid)[..., None], features)  # transformers' own merge
    assert torch.equal(out, reference)
    assert torch.equal(merge_video_tokens(embeds, torch.zeros_like(ids), features[:0], vid), embeds)  # no video


def test_left_padded_batch_generates_what_each_prompt_generates_alone(base, info):
    model = lora(info)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    fmt = model.prompt_format("{video} question : {question} answer :")
    prompts = [prompt_ids(tok, fmt, "what colour is it ?"), prompt_ids(tok, fmt, "which way does the red circle move ?")]
    with torch.no_grad():
        tokens = model.encode_frames(frames(b=2))[0]
    together = greedy_generate(model, tokens, prompts, 6, fmt.eos_token_id, fmt.pad_token_id)
    alone = [greedy_generate(model, tokens[i : i + 1], [p], 6, fmt.eos_token_id, fmt.pad_token_id)[0]
             for i, p in enumerate(prompts)]
    assert together == alone and all(len(x) >= 1 for x in together)
    # greedy = the argmax of a full forward pass, token after token
    for i, p in enumerate(prompts):
        ids = torch.tensor([p + together[i][:-1]])  # every generated token but the last as input
        with torch.no_grad():
            logits = model.logits(ids, torch.ones_like(ids), tokens[i : i + 1])[0]
        assert logits[len(p) - 1:].argmax(-1).tolist() == together[i]


@pytest.mark.parametrize("temporal", [False, True])
def test_temporal_branch_sees_the_folded_frames_as_a_sequence(info, temporal):
    """Frames enter the tower as one batch (B*K images). Plain LoRA encodes each frame alone: reversing the
    clip reverses the per-frame token blocks. The temporal branch mixes neighbouring frames: it does not."""
    model = lora(info, temporal=temporal)
    clip = frames()
    with torch.no_grad():
        fwd = model.encode_frames(clip)[0][0, :-1].reshape(K, 4, -1)
        rev = model.encode_frames(clip.flip(1))[0][0, :-1].reshape(K, 4, -1)
    if temporal:
        assert not torch.allclose(fwd, rev.flip(0), atol=1e-4)
    else:
        torch.testing.assert_close(fwd, rev.flip(0), rtol=1e-4, atol=1e-5)


def test_groups_are_vision_fusion_decoder_and_all_linear_leaves_out_lm_head(info):
    model = lora(info)
    layers = linear_layers(model.core, "all-linear")
    groups = {x.name: x.group for x in layers}
    assert groups["model.vision_tower.encoder.layers.0.self_attn.q_proj"] == "vision"
    assert groups["model.multi_modal_projector.linear_1"] == "fusion"
    assert groups["model.language_model.layers.1.mlp.down_proj"] == "decoder"
    assert "lm_head" not in groups  # PEFT's all-linear skips the output layer, so the plan does too
    assert set(group_summary(layers)) == {"vision", "fusion", "decoder"}
    assert trainable_parameters(model)[0] == sum(8 * (x.in_features + x.out_features) for x in layers)


@pytest.mark.parametrize("groups, keep, vision_4bit, projector_4bit", [
    (None, "default", True, True),  # transformers' own choice: everything but the output layer (tied to the embeddings)
    (["decoder"], "default", False, False),  # only the decoder in 4-bit
    (None, ["lm_head", "model.multi_modal_projector"], True, False),  # a list replaces the default
])
def test_what_stays_out_of_4bit_is_a_recipe_choice(base, groups, keep, vision_4bit, projector_4bit):
    from toolchain.models.assemble import build_trainable, default_unquantized, model_info

    recipe = validate_recipe({"model": {"family": "video-llm", "name_or_path": str(base)}, "frames": {"k": K},
                              "adapters": {"quantize_groups": groups, "keep_unquantized": keep,
                                           "target_modules": "all-linear"}})
    info = model_info(recipe)
    assert "lm_head" in default_unquantized(info)
    kind = {n: type(m).__name__ for n, m in build_trainable(recipe, info, "cpu").hf.named_modules()}
    assert (kind["model.vision_tower.encoder.layers.0.mlp.fc1.base_layer"] == "Linear4bit") == vision_4bit
    assert (kind["model.multi_modal_projector.linear_1.base_layer"] == "Linear4bit") == projector_4bit
    assert kind["model.language_model.layers.0.mlp.up_proj.base_layer"] == "Linear4bit"
    assert kind["lm_head"] == "Linear"


@pytest.mark.parametrize("raw, message", [
    ({"model": {"family": "video-llm"}, "task": "retrieval"}, "task: retrieval needs a dual encoder"),
    ({"task": "captioning"}, "task: captioning needs a decoder: set model.family: video-llm"),
    ({"model": {"family": "video-llm"}, "task": "qa", "data": {"format": "msrvtt", "annotations": "a",
                                                                "video_root": "v"}}, "task: qa reads question-answer rows"),
    ({"model": {"family": "video-llm"}, "generation": {"prompt": "describe"}}, "must contain {video} exactly once"),
    ({"model": {"family": "video-llm"}, "task": "qa", "generation": {"prompt": "{video} answer"}}, "needs {question}"),
    ({"adapters": {"quantize_groups": ["vision"]}}, "adapters.quantize_groups chooses the 4-bit groups of a video-llm"),
    ({"model": {"family": "video-llm", "pooling": "transformer"}}, "leave model.pooling at 'mean'"),
])
def test_recipe_checks_task_family_and_prompt(raw, message):
    with pytest.raises(RecipeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        validate_recipe(raw)


def test_task_defaults_follow_the_family():
    assert validate_recipe({}).task == "retrieval"
    recipe = validate_recipe({"model": {"family": "video-llm"}})
    assert recipe.task == "captioning" and recipe.generation.template("captioning") == "{video} describe the video ."
