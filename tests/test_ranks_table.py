"""What `vqtool adapters plan` shows and what a budget error says, on hand-built layers (no model).

The tables and hints are what a person reads to choose a budget, so the numbers in them are checked
against sums done here by hand; the layers are synthetic, so every test runs in milliseconds.
"""

from __future__ import annotations

import json
import re

import pytest

from toolchain.adapters.groups import LinearLayer
from toolchain.adapters.ranks import (
    LayerRank,
    RankPlan,
    check_budget,
    group_table,
    layer_table,
    plan_ranks,
    plan_table,
    temporal_extra,
)
from toolchain.errors import RecipeError
from toolchain.recipe import AdaptersSection, TemporalSection, validate_recipe

V0 = LinearLayer("vision_model.encoder.layers.0.self_attn.q_proj", "vision", 768, 768)  # 1,536 per rank
V1 = LinearLayer("vision_model.encoder.layers.1.mlp.fc1", "vision", 768, 3072)  # 3,840 per rank
T0 = LinearLayer("text_model.encoder.layers.0.self_attn.v_proj", "text", 512, 512)  # 1,024 per rank
F0 = LinearLayer("visual_projection", "fusion", 768, 512)  # 1,280 per rank
LAYERS = [V0, V1, T0, F0]
STEP = 1536 + 3840 + 1024 + 1280  # one rank on every layer: 7,680


def adapters(**ranks) -> AdaptersSection:
    return validate_recipe({"adapters": {"target_modules": "all-linear", "ranks": ranks}}).adapters


def hand_plan() -> RankPlan:
    """vision ranks 4 and 2 (6,144 + 7,680), text 3 (3,072), fusion not adapted: 16,896 in all."""
    rows = [LayerRank(V0, 1536, 4, 8.0, 0.5), LayerRank(V1, 3840, 2, 4.0, 0.0123456),
            LayerRank(T0, 1024, 3, 6.0, None), LayerRank(F0, 1280, 0, 0.0, 2.0)]
    return RankPlan("manual", 16_000, 2_000_000, rows)


def test_plan_table_rows_are_the_groups_sums():
    lines = plan_table(hand_plan()).splitlines()
    assert lines[0] == "rank allocation (manual)"
    head, rule = lines[1], lines[2]
    assert head.split() == ["group", "layers", "adapted", "rank", "adapter", "params", "share"]
    assert rule == "-" * len(head)
    rows = {line.split()[0]: line for line in lines[3:]}
    assert rows["vision"].split() == ["vision", "2", "2", "2-4", "13,824", "81.8%"]
    assert rows["text"].split() == ["text", "1", "1", "3", "3,072", "18.2%"]  # one rank: no range
    assert rows["fusion"].split() == ["fusion", "1", "0", "0", "0", "0.0%"]
    for g in ("vision", "text", "fusion"):  # the columns line up under the header
        assert len(rows[g]) == len(head)
    # 16,896 / 16,000 - 1 = +5.6 %; 16,896 / 2,000,000 = 0.84 % of the base
    assert rows["total"].split() == ["total", "4", "3", "16,896", "budget", "16,000", "(+5.6%),", "0.84%",
                                     "of", "the", "base"]
    assert list(rows) == ["vision", "text", "fusion", "total"]


def test_plan_table_leaves_out_groups_without_layers_and_an_empty_plan_does_not_divide_by_zero():
    plan = RankPlan("uniform", 3072, 0, [LayerRank(T0, 1024, 3)])
    lines = plan_table(plan).splitlines()
    assert [x.split()[0] for x in lines[3:]] == ["text", "total"]
    assert lines[3].split()[-1] == "100.0%"
    assert "budget 3,072 (+0.0%)" in lines[4]  # base_params 0 is not a crash
    empty = RankPlan("manual", 1000, 1000, [LayerRank(T0, 1024, 0)])
    assert plan_table(empty).splitlines()[3].split() == ["text", "1", "0", "0", "0", "0.0%"]


def test_group_table_counts_layers_and_base_parameters_per_group():
    lines = group_table(hand_plan()).splitlines()
    assert lines[0] == "module groups (targeted linear layers)"
    assert lines[1].split() == ["group", "linear", "layers", "base", "params", "example"]
    assert lines[2] == "-" * len(lines[1])
    # vision: 768*768 + 768*3072 = 2,949,120; the example is the first layer of the group
    assert [x.split() for x in lines[3:]] == [
        ["vision", "2", "2,949,120", V0.name],
        ["text", "1", "262,144", T0.name],
        ["fusion", "1", "393,216", F0.name],
    ]
    only_text = group_table(RankPlan("uniform", 1, 1, [LayerRank(T0, 1024, 1)])).splitlines()
    assert [x.split()[0] for x in only_text[3:]] == ["text"]


def test_layer_table_has_one_aligned_row_per_layer():
    lines = layer_table(hand_plan()).splitlines()
    assert lines[0].split() == ["layer", "group", "shape", "rank", "params", "importance"]
    assert len(lines) == 1 + 4
    assert lines[1].split() == [V0.name, "vision", "768x768", "4", "6,144", "0.5"]
    assert lines[2].split() == [V1.name, "vision", "768x3072", "2", "7,680", "0.0123"]  # 3 significant digits
    assert lines[3].split() == [T0.name, "text", "512x512", "3", "3,072"]  # no importance: blank
    assert lines[4].split() == [F0.name, "fusion", "768x512", "0", "0", "2"]
    assert len({len(x) for x in lines}) == 1  # every row as wide as the header: the columns line up
    width = len(V0.name)  # the longest name: every name is padded to it
    for line, layer in zip(lines[1:], [V0, V1, T0, F0]):
        assert line[:width].rstrip() == layer.name and line[width + 1:].split()[0] == layer.group


def test_lora_kwargs_target_only_adapted_layers_by_their_exact_name():
    kwargs = hand_plan().lora_kwargs()
    assert kwargs["target_modules"] == [V0.name, V1.name, T0.name]  # fusion has rank 0: not targeted
    assert set(kwargs["rank_pattern"].values()) == {4, 2, 3} and len(kwargs["rank_pattern"]) == 3
    for pattern, alpha in kwargs["alpha_pattern"].items():
        name = next(x for x in (V0.name, V1.name, T0.name) if re.fullmatch(pattern, x))
        assert kwargs["rank_pattern"][pattern] == {V0.name: 4, V1.name: 2, T0.name: 3}[name]
        assert alpha == {V0.name: 8.0, V1.name: 4.0, T0.name: 6.0}[name]
        assert not re.fullmatch(pattern, name.replace(".", "_"))  # a dot in a name matches only a dot


def test_ranks_json_carries_the_plan():
    data = json.loads(json.dumps(hand_plan().to_json()))
    assert data["strategy"] == "manual" and data["budget"] == 16_000 and data["total"] == 16_896
    assert data["budget_error"] == 0.056 and data["base_params"] == 2_000_000
    assert data["groups"]["vision"] == {"layers": 2, "adapted": 2, "rank_min": 2, "rank_max": 4, "params": 13_824}
    assert data["groups"]["fusion"] == {"layers": 1, "adapted": 0, "rank_min": 0, "rank_max": 0, "params": 0}
    assert data["layers"][1] == {"name": V1.name, "group": "vision", "rank": 2, "alpha": 4.0, "params": 7680,
                                 "importance": 0.0123456}
    assert [x["name"] for x in data["layers"]] == [V0.name, V1.name, T0.name, F0.name]


def test_a_plan_that_adapts_nothing_is_a_recipe_error():
    plan = RankPlan("manual", 1000, 1000, [LayerRank(T0, 1024, 0), LayerRank(F0, 1280, 0)])
    with pytest.raises(RecipeError) as exc:
        check_budget(plan, adapters().ranks)
    assert str(exc.value) == "adapters.ranks: the allocation adapts no layer; raise the budget or the shares"


def test_targets_that_select_no_layer_are_a_recipe_error():
    with pytest.raises(RecipeError) as exc:
        plan_ranks(adapters(), [], {}, 10_000_000)
    assert str(exc.value) == "adapters.target_modules selects no linear layer, so there is nothing to allocate"


def test_a_rank_one_layer_counts_as_adapted_and_the_plan_knows_its_base():
    plan = plan_ranks(adapters(budget=STEP), LAYERS, {}, 10_000_000)  # rank 1 everywhere
    assert plan.by_group()["vision"]["adapted"] == 2 and plan.to_json()["groups"]["text"]["adapted"] == 1
    assert plan.to_json()["base_params"] == 10_000_000
    assert plan_table(plan).endswith("0.08% of the base")  # 7,680 / 10,000,000


def test_a_narrow_layer_caps_the_rank_at_its_smaller_side():
    narrow = [LinearLayer("vision_model.encoder.layers.0.mlp.fc2", "vision", 8, 768),  # in 8
              LinearLayer("text_model.encoder.layers.0.mlp.fc1", "text", 768, 8)]  # out 8
    a = adapters(strategy="manual", budget=24_832, shares={"vision": 0.5, "text": 0.5})
    with pytest.raises(RecipeError) as exc:
        plan_ranks(a, narrow, {}, 10_000_000)
    # each wants 12,416 = 16 ranks of 776; neither takes more than 8 ranks: 6,208
    for g in ("vision", "text"):
        assert f"the {g} share (12,416) is outside what its layers can take (776 at min_rank 1 to 6,208 " in str(exc.value)
    plan = plan_ranks(adapters(strategy="manual", budget=12_416, shares={"vision": 0.5, "text": 0.5}), narrow, {},
                      10_000_000)
    assert [x.rank for x in plan.layers] == [8, 8]


def test_a_zero_share_for_a_group_the_targets_miss_is_fine():
    plan = plan_ranks(adapters(strategy="manual", budget=40_000, shares={"vision": 1.0, "fusion": 0.0}),
                      [V0, V1, T0], {}, 10_000_000)
    assert {x.layer.group for x in plan.active()} == {"vision"}


def test_leftover_budget_goes_to_the_largest_remainder_first():
    from toolchain.adapters.ranks import integer_ranks

    rows = [LayerRank(T0, 1024), LayerRank(LinearLayer("text_model.x", "text", 512, 512), 1024),
            LayerRank(LinearLayer("text_model.y", "text", 512, 512), 1024)]
    integer_ranks(rows, [2.8, 2.2, 2.6], 8 * 1024, 64)  # floors 2+2+2; 2 ranks left: to 2.8 and 2.6
    assert [x.rank for x in rows] == [3, 2, 3]


def test_uniform_budget_off_the_step_says_the_step_and_the_miss():
    with pytest.raises(RecipeError) as exc:
        plan_ranks(adapters(budget=int(8.5 * STEP)), LAYERS, {}, 10_000_000)
    # 8.5 steps round to 8 ranks everywhere: 61,440 of 65,280 is -5.9 %
    assert str(exc.value) == (
        "adapters.ranks.budget: 65,280 parameters requested, the allocation reaches 61,440 (-5.9%, the limit is "
        "±5%); with strategy uniform the budget moves in steps of 7,680 (one rank everywhere): pick a "
        "multiple, or use strategy manual or importance")
    plan = plan_ranks(adapters(budget=3 * STEP), LAYERS, {}, 10_000_000)
    assert [x.rank for x in plan.layers] == [3, 3, 3, 3] and plan.total == plan.budget


def test_manual_shares_beyond_their_layers_name_each_group_and_its_range():
    a = adapters(strategy="manual", budget=1_000_000, shares={"vision": 0.5, "text": 0.5})
    with pytest.raises(RecipeError) as exc:
        plan_ranks(a, LAYERS, {}, 10_000_000)
    # every layer at max_rank 64: vision 64 * 5,376 = 344,064, text 64 * 1,024 = 65,536
    assert str(exc.value) == (
        "adapters.ranks.budget: 1,000,000 parameters requested, the allocation reaches 409,600 (-59.0%, the "
        "limit is ±5%); the vision share (500,000) is outside what its layers can take (5,376 at min_rank 1 "
        "to 344,064 at max_rank 64 or min(in, out)); the text share (500,000) is outside what its layers can "
        "take (1,024 at min_rank 1 to 65,536 at max_rank 64 or min(in, out)): change the budget, the shares "
        "or min_rank/max_rank")


def test_manual_hint_names_only_the_groups_out_of_range():
    a = adapters(strategy="manual", budget=300_000, shares={"vision": 0.9, "text": 0.0, "fusion": 0.1},
                 min_rank=2, max_rank=32)
    with pytest.raises(RecipeError) as exc:
        plan_ranks(a, LAYERS, {}, 10_000_000)
    msg = str(exc.value)
    # fusion wants 30,000 but takes 2 * 1,280 = 2,560 to 32 * 1,280 = 40,960: it fits; vision's 270,000
    # is above 32 * 5,376 = 172,032; text has no share, so no bound is quoted for it
    assert "the vision share (270,000) is outside what its layers can take (10,752 at min_rank 2 to 172,032 " \
           "at max_rank 32 or min(in, out))" in msg
    assert "fusion share" not in msg and "text share" not in msg


def test_importance_budget_beyond_every_layer_is_named_once():
    scores = {x.name: 1.0 for x in LAYERS}
    with pytest.raises(RecipeError) as exc:
        plan_ranks(adapters(strategy="importance", budget=10_000_000), LAYERS, {}, 10_000_000, scores)
    msg = str(exc.value)
    assert msg.count("is outside what its layers can take") == 1
    assert "the budget (10,000,000) is outside what its layers can take (7,680 at min_rank 1 to 491,520 at " \
           "max_rank 64 or min(in, out))" in msg
    with pytest.raises(RecipeError, match=r"the budget \(100\) is outside .*\(7,680 at min_rank 1 to"):
        plan_ranks(adapters(strategy="importance", budget=100), LAYERS, {}, 10_000_000, scores)


def test_alpha_keeps_the_recipes_scale_at_every_rank():
    a = validate_recipe({"adapters": {"target_modules": "all-linear", "rank": 4, "alpha": 12.0,
                                      "ranks": {"strategy": "manual", "budget": 40_000,
                                                "shares": {"vision": 0.7, "text": 0.3}}}}).adapters
    plan = plan_ranks(a, LAYERS, {}, 10_000_000)
    assert len({x.rank for x in plan.active()}) > 1
    for x in plan.layers:
        assert x.alpha == pytest.approx(3.0 * x.rank)  # alpha / rank = 12 / 4 on every layer


def test_importance_needs_scores_and_gives_the_least_important_min_rank():
    with pytest.raises(ValueError, match="needs calibration scores"):
        plan_ranks(adapters(strategy="importance", budget=40_000), LAYERS, {}, 10_000_000)
    scores = {V0.name: 8.0, V1.name: 1.0, T0.name: -3.0, F0.name: 0.0}  # a negative score counts as 0
    plan = plan_ranks(adapters(strategy="importance", budget=40_000, min_rank=2), LAYERS, {}, 10_000_000, scores)
    rank = {x.layer.name: x.rank for x in plan.layers}
    assert rank[T0.name] == rank[F0.name] == 2 and rank[V0.name] > rank[V1.name] >= 2
    assert [x.importance for x in plan.layers] == [8.0, 1.0, 0.0, 0.0]
    assert abs(plan.total / 40_000 - 1) <= 0.05


def test_percent_budgets_round_to_parameters_of_the_base():
    plan = plan_ranks(adapters(budget="0.5%"), LAYERS, {}, 4_608_000)  # 23,040 = 3 steps
    assert plan.budget == 23_040 and {x.rank for x in plan.layers} == {3}
    plan = plan_ranks(adapters(budget=" 1.5 % "), LAYERS, {}, 1_536_000)  # 23,040 again
    assert plan.budget == 23_040


def test_a_budget_under_one_parameter_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"adapters\.ranks\.budget: '0%' of the base .* less than one parameter"):
        plan_ranks(adapters(budget="0%"), LAYERS, {}, 10_000_000)


def layers_with_message_fc() -> list[LinearLayer]:
    return [V0, V1, LinearLayer("vision_model.encoder.layers.1.message_fc", "vision", 768, 768), T0, F0]


@pytest.mark.parametrize("gate, kernel, per", [
    ("both", 3, 3 + 1 + 4),  # conv taps, the motion gate's 1, the position gate's K
    ("motion", 3, 3 + 1),
    ("position", 5, 5 + 4),
    ("none", 3, 3),
])
def test_temporal_branches_cost_their_taps_and_gates_on_vision_encoder_layers(gate, kernel, per):
    layers = layers_with_message_fc()
    extra = temporal_extra(layers, TemporalSection(enabled=True, gate=gate, kernel=kernel), 4)
    assert extra == {V0.name: per, V1.name: per}  # not message_fc, not text, not the projection
    chosen = temporal_extra(layers, TemporalSection(enabled=True, gate=gate, kernel=kernel, layers=[1]), 4)
    assert chosen == {V1.name: per}
    assert temporal_extra(layers, TemporalSection(enabled=False), 4) == {}


def test_a_temporal_branch_is_paid_for_out_of_the_budget():
    extra = temporal_extra(LAYERS, TemporalSection(enabled=True, gate="both", kernel=3), 4)
    plan = plan_ranks(adapters(budget=2 * (STEP + 2 * 8)), LAYERS, extra, 10_000_000)
    assert [x.per_rank for x in plan.layers] == [1536 + 8, 3840 + 8, 1024, 1280]
    assert {x.rank for x in plan.layers} == {2} and plan.total == plan.budget
