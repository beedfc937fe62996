"""Cross-modality rank allocation: groups from module paths, budgets honoured, plans PEFT can build."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHIPPED_RECIPE
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.adapters.calibrate import fisher_scores
from toolchain.adapters.groups import GROUPS, group_of, linear_layers
from toolchain.adapters.qlora import add_lora, bnb_config, keep_training_layout, trainable_parameters
from toolchain.adapters.ranks import TOLERANCE, plan_ranks, temporal_extra
from toolchain.adapters.temporal import attach_temporal
from toolchain.errors import RecipeError
from toolchain.models.build import base_info, load_clip
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import AdaptersSection, validate_recipe

K = 4


@pytest.fixture(scope="module")
def info():
    return base_info("tiny-video-clip")


@pytest.fixture(scope="module")
def tiny_layers(info):
    return linear_layers(load_clip(info.path), "all-linear")


def adapters(**ranks) -> AdaptersSection:
    temporal = ranks.pop("temporal", False)
    return validate_recipe({"adapters": {"target_modules": "all-linear", "ranks": ranks,
                                         "temporal": {"enabled": temporal}}}).adapters


def test_tiny_clip_groups_by_path(tiny_layers):
    groups = {x.name: x.group for x in tiny_layers}
    assert groups["vision_model.encoder.layers.0.self_attn.q_proj"] == "vision"
    assert groups["text_model.encoder.layers.2.mlp.fc2"] == "text"
    assert groups["visual_projection"] == groups["text_projection"] == "fusion"
    counts = {g: sum(x.group == g for x in tiny_layers) for g in GROUPS}
    assert counts == {"vision": 4 * 6, "text": 3 * 6, "fusion": 2, "decoder": 0}  # a dual encoder has no decoder


def test_dual_encoder_groups_from_a_saved_model(tmp_path):
    from transformers import BertConfig, ViTConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    vision = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16)
    text = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=99)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=16)
    VisionTextDualEncoderModel(config).save_pretrained(tmp_path)
    model = VisionTextDualEncoderModel.from_pretrained(tmp_path)
    layers = linear_layers(model, "all-linear")
    by_group = {g: [x.name for x in layers if x.group == g] for g in GROUPS}
    # the towers' own layer names (ViT and BERT, as transformers names them), grouped by tower
    assert len(by_group["vision"]) >= 2 * 6 and all(n.startswith("vision_model.") for n in by_group["vision"])
    assert len(by_group["text"]) >= 2 * 6 and all(n.startswith("text_model.") for n in by_group["text"])
    assert set(by_group["fusion"]) >= {"visual_projection", "text_projection"}
    # BERT's pooler sits inside the text tower; nothing of either tower leaks into fusion
    assert not [n for n in by_group["fusion"] if n.startswith(("vision_model.", "text_model."))]


@pytest.mark.parametrize("name, group", [
    ("mit.encoder.layers.0.mlp.fc1", "fusion"),  # X-CLIP multi-frame integration transformer
    ("prompts_generator.decoder.0.cross_attn.q_proj", "fusion"),
    ("prompts_visual_projection", "fusion"),
    ("vision_model.encoder.layers.3.message_fc", "vision"),  # X-CLIP cross-frame messages
    ("text_model.encoder.layers.0.self_attn.v_proj", "text"),
])
def test_xclip_paths(name, group):
    assert group_of(name) == group


def test_target_list_selects_by_suffix(info):
    layers = linear_layers(load_clip(info.path), ["q_proj", "v_proj"])
    assert layers and all(x.name.endswith(("q_proj", "v_proj")) for x in layers)
    assert {x.group for x in layers} == {"vision", "text"}


def test_uniform_without_budget_is_todays_rank(tiny_layers):
    plan = plan_ranks(adapters(), tiny_layers, {}, 1_000_000)
    assert {x.rank for x in plan.layers} == {8}
    assert plan.total == plan.budget == 8 * sum(x.in_features + x.out_features for x in tiny_layers)


@settings(max_examples=80, deadline=None)
@given(budget=st.integers(10_000, 250_000),
       shares=st.lists(st.integers(0, 10), min_size=3, max_size=3).filter(lambda s: s[0] + s[1] > 0),
       strategy=st.sampled_from(["manual", "importance"]), temporal=st.booleans(), seed=st.integers(0, 99))
def test_budget_is_honoured_within_5_percent(tiny_layers, budget, shares, strategy, temporal, seed):
    """Either the plan is within 5 % of the budget, or no plan could be and the error says why."""
    total = sum(shares)
    kwargs = {"strategy": strategy, "budget": budget, "max_rank": 48}
    if strategy == "manual":
        kwargs["shares"] = dict(zip(GROUPS, [s / total for s in shares[:2]] + [1 - sum(shares[:2]) / total]))
    a = adapters(temporal=temporal, **kwargs)
    extra = temporal_extra(tiny_layers, a.temporal, K)
    g = torch.Generator().manual_seed(seed)
    scores = {x.name: float(torch.rand(1, generator=g)) + 1e-3 for x in tiny_layers}
    try:
        plan = plan_ranks(a, tiny_layers, extra, 375_000, scores)
    except RecipeError as exc:
        assert "is outside what its layers can take" in str(exc)
        assert not feasible(tiny_layers, extra, a, budget), str(exc)
        return
    assert abs(plan.total / budget - 1) <= TOLERANCE
    assert all(x.rank == 0 or 1 <= x.rank <= min(48, x.layer.in_features, x.layer.out_features) for x in plan.layers)
    if strategy == "manual" and feasible(tiny_layers, extra, a, budget):  # shares kept up to rounding
        for grp, row in plan.by_group().items():
            assert abs(row["params"] / plan.total - a.ranks.shares[grp]) < 0.05


def feasible(layers, extra, a: AdaptersSection, budget: int) -> bool:
    """Independent check: can every group's target be met with ranks in [min_rank, min(max_rank, in, out)]?"""
    cfg = a.ranks
    groups = cfg.shares if cfg.strategy == "manual" else {None: 1.0}
    for group, share in groups.items():
        rows = [x for x in layers if group in (None, x.group)]
        cost = [x.in_features + x.out_features + extra.get(x.name, 0) for x in rows]
        lo = sum(cfg.min_rank * c for c in cost)
        hi = sum(min(cfg.max_rank, x.in_features, x.out_features) * c for x, c in zip(rows, cost))
        if share > 0 and not lo <= share * budget <= hi:
            return False
    return True


def test_importance_orders_ranks(tiny_layers):
    scores = {x.name: (10.0 if x.group == "vision" else 1.0) for x in tiny_layers}
    plan = plan_ranks(adapters(strategy="importance"), tiny_layers, {}, 375_000, scores)
    rank = {x.layer.group: x.rank for x in plan.layers}
    assert rank["vision"] > rank["text"] >= 1


def test_percent_budget_is_a_fraction_of_the_base(tiny_layers):
    plan = plan_ranks(adapters(strategy="manual", budget="10%", shares={"vision": 1.0}), tiny_layers, {}, 400_000)
    assert plan.budget == 40_000 and abs(plan.total / 40_000 - 1) <= TOLERANCE
    assert {x.layer.group for x in plan.active()} == {"vision"}  # a group without a share is not adapted


def test_uniform_budget_between_two_ranks_names_the_step(tiny_layers):
    step = sum(x.in_features + x.out_features for x in tiny_layers)
    with pytest.raises(RecipeError, match=r"adapters\.ranks\.budget.*steps of"):
        plan_ranks(adapters(budget=int(8.5 * step)), tiny_layers, {}, 375_000)
    assert plan_ranks(adapters(budget=6 * step), tiny_layers, {}, 375_000).layers[0].rank == 6


@pytest.mark.parametrize("ranks, message", [
    ({"strategy": "manual", "shares": {"vision": 0.5, "audio": 0.5}}, "unknown group 'audio'; groups are vision, text, fusion"),
    ({"strategy": "manual", "shares": {"vision": 0.6, "text": 0.6}}, "must sum to 1, they sum to 1.2"),
    ({"strategy": "manual"}, "needs adapters.ranks.shares"),
    ({"strategy": "uniform", "shares": {"vision": 1.0}}, "only used by strategy manual"),
    ({"budget": "lots"}, "neither a parameter count"),
    ({"min_rank": 9, "max_rank": 4}, "min_rank (9) must be <= max_rank (4)"),
    ({"strategy": "adalora"}, "choose one of 'uniform', 'manual' or 'importance'"),
])
def test_bad_ranks_section_is_a_recipe_error(ranks, message):
    with pytest.raises(RecipeError, match="adapters.ranks") as exc:
        validate_recipe({"adapters": {"ranks": ranks}})
    assert message in str(exc.value)


def test_share_for_a_group_the_targets_miss(info):
    layers = linear_layers(load_clip(info.path), ["q_proj"])
    with pytest.raises(RecipeError, match="no 'fusion' layer; groups present: vision, text"):
        plan_ranks(adapters(strategy="manual", shares={"vision": 0.5, "fusion": 0.5}), layers, {}, 375_000)


def build(info, a: AdaptersSection, plan) -> VideoCLIP:
    torch.manual_seed(0)
    clip = load_clip(info.path, bnb_config(a))
    keep_training_layout(clip)
    model = VideoCLIP(add_lora(clip, a, plan), K, "uniform", info.image_size, info.mean, info.std)
    if a.temporal.enabled:
        attach_temporal(model.clip, a.temporal, K, model.temporal)
    return model


@pytest.mark.parametrize("strategy", ["manual", "importance"])
def test_peft_builds_exactly_the_planned_parameters(info, tiny_layers, strategy):
    """rank_pattern/alpha_pattern as PEFT applies them on the NF4 base, temporal branches included."""
    kwargs = {"shares": {"vision": 0.5, "text": 0.3, "fusion": 0.2}} if strategy == "manual" else {}
    a = adapters(strategy=strategy, budget=30_000, temporal=True, **kwargs)
    scores = {x.name: 1.0 + i % 5 for i, x in enumerate(tiny_layers)}
    plan = plan_ranks(a, tiny_layers, temporal_extra(tiny_layers, a.temporal, K), 375_000, scores)
    model = build(info, a, plan)
    assert trainable_parameters(model)[0] == plan.total
    for x in plan.active():
        module = model.clip.base_model.model.get_submodule(x.layer.name)
        assert module.r["default"] == x.rank
        assert module.scaling["default"] == pytest.approx(a.alpha / a.rank)  # alpha follows the rank


def test_fisher_scores_are_positive_and_leave_weights_alone(info):
    a = adapters(strategy="importance")
    model = build(info, a, None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 4, K, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, 20, (2, 4, 6), generator=g)

    def loss(video, text):
        pix, _, motion = model.prepare_frames(video)
        v = model.encode_pixels(pix, motion)
        t = model.encode_text(text, torch.ones_like(text))
        return -(v * t).sum()

    scores = fisher_scores(model, [(frames[i], ids[i]) for i in range(2)], loss)
    assert set(scores) == {x.name for x in linear_layers(model.clip, "all-linear")}
    assert all(s > 0 for s in scores.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_finetune_and_export_with_an_importance_plan(tmp_path, tiny_recipe, run_cli):
    from export.pipeline import export_run
    from toolchain.progress import Reporter
    from toolchain.train import finetune

    recipe = tiny_recipe.model_copy(deep=True)
    recipe.adapters.ranks = adapters(strategy="importance", budget=30_000, calibration_batches=2).ranks
    recipe.train.max_steps = 2
    result = finetune(recipe, tmp_path / "run", False, Reporter(quiet=True))
    ranks = json.loads((tmp_path / "run" / "ranks.json").read_text())
    assert ranks["strategy"] == "importance" and ranks["total"] == result["trainable_params"]
    assert abs(ranks["total"] / 30_000 - 1) <= TOLERANCE
    assert len({x["rank"] for x in ranks["layers"]}) > 1
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert len(config["rank_pattern"]) == len(ranks["layers"])
    parity = export_run(tmp_path / "run", tmp_path / "export", False, ["fp32"], Reporter(quiet=True))
    assert parity["passed"], parity


def test_adapters_plan_cli_prints_groups_and_a_plan_within_budget(run_cli):
    shares = "adapters.ranks.shares={vision: 0.6, text: 0.2, fusion: 0.2}"
    out = run_cli("adapters", "plan", SHIPPED_RECIPE, "--set", "adapters.ranks.strategy=manual",
                  "--set", shares, "--set", "adapters.ranks.budget=40000", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert abs(plan["total"] / 40_000 - 1) <= TOLERANCE
    assert set(plan["groups"]) == {"vision", "text", "fusion"}
    assert abs(plan["groups"]["vision"]["params"] / plan["total"] - 0.6) < 0.02
    table = run_cli("adapters", "plan", SHIPPED_RECIPE, "--layers")
    assert table.returncode == 0, table.stderr
    assert "module groups" in table.stdout and "rank allocation (uniform)" in table.stdout
    assert "vision_model.encoder.layers.3.mlp.fc2" in table.stdout


def test_adapters_plan_cli_rejects_bad_shares_without_a_traceback(run_cli):
    out = run_cli("adapters", "plan", SHIPPED_RECIPE, "--set", "adapters.ranks.strategy=manual",
                  "--set", "adapters.ranks.shares={vision: 0.7, audio: 0.3}")
    assert out.returncode == 2
    assert "unknown group 'audio'" in out.stderr and "Traceback" not in out.stderr
