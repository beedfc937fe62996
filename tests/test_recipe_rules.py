"""The recipe's rules as a user meets them: each problem's line names the key, the value and the fix;
defaults and the parity gates a run falls back to; `--set` parsing corners. Pure Python, milliseconds."""

from __future__ import annotations

import pytest
import yaml

from toolchain.errors import RecipeError
from toolchain.recipe import (
    DEFAULT_GATES,
    DEFAULT_MAX_STEPS,
    Recipe,
    apply_override,
    dump_recipe,
    load_recipe,
    parse_value,
    validate_recipe,
)


def problem_lines(raw, source="r.yaml") -> list[str]:
    with pytest.raises(RecipeError) as exc:
        validate_recipe(raw, source=source)
    head, *lines = str(exc.value).splitlines()
    assert head == f"{source}: {len(lines)} problem(s)"
    assert all(x.startswith("  - ") for x in lines)
    return [x[4:] for x in lines]


def shares_problem(shares) -> str:
    (line,) = problem_lines({"adapters": {"ranks": {"strategy": "manual", "shares": shares}}})
    assert line.startswith("adapters.ranks: Value error, adapters.ranks.")
    return line


@pytest.mark.parametrize("shares, message", [
    (None, "strategy manual needs adapters.ranks.shares, e.g. {vision: 0.6, text: 0.2, fusion: 0.2}"),
    ({}, "strategy manual needs adapters.ranks.shares, e.g. {vision: 0.6, text: 0.2, fusion: 0.2}"),
    ({"depth": 0.5, "audio": 0.5, "vision": 0.0},  # every unknown group, sorted
     "shares: unknown group 'audio', 'depth'; groups are vision, text, fusion"),
    ({"vision": 1.5, "text": -0.5}, "shares must not be negative"),  # sums to 1, but one share is < 0
    ({"vision": 0.3, "text": 0.3}, "shares must sum to 1, they sum to 0.6 ({'vision': 0.3, 'text': 0.3})"),
    ({"vision": 0.7, "text": 0.3001}, "they sum to 1.0001"),
])
def test_bad_manual_shares_say_what_is_wrong(shares, message):
    assert message in shares_problem(shares)


def test_shares_that_sum_to_one_up_to_float_rounding_are_accepted():
    shares = {"vision": 0.7, "text": 0.2, "fusion": 0.1}  # 0.7 + 0.2 + 0.1 = 0.9999999999999999
    assert validate_recipe({"adapters": {"ranks": {"strategy": "manual", "shares": shares}}}).adapters.ranks.shares \
        == shares
    zero = {"vision": 1.0, "text": 0.0}  # a zero share is allowed: that group is left unadapted
    assert validate_recipe({"adapters": {"ranks": {"strategy": "manual", "shares": zero}}}).adapters.ranks.shares \
        == zero


def test_without_a_source_the_problems_are_the_recipes():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"frames": {"k": 0}})
    assert str(exc.value).startswith("recipe: 1 problem(s)\n  - frames.k:")


def test_a_range_error_names_the_key_the_rule_and_the_value():
    assert problem_lines({"frames": {"k": 0}}) == ["frames.k: Input should be greater than or equal to 1 (got 0)"]
    assert problem_lines({"train": {"lr": "fast"}}) == [
        "train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"]


def test_a_section_rule_names_the_section_and_the_input():
    assert problem_lines({"adapters": {"ranks": {"min_rank": 9, "max_rank": 4}}}) == [
        "adapters.ranks: Value error, adapters.ranks.min_rank (9) must be <= max_rank (4) "
        "(got {'min_rank': 9, 'max_rank': 4})"]


def test_a_recipe_that_is_not_a_mapping_is_one_plain_problem():
    assert problem_lines(["model", "data"], source="list.yaml") == [
        "Input should be a valid dictionary or instance of Recipe"]


def test_an_unknown_nested_key_suggests_the_nearest_and_lists_that_sections_keys():
    assert problem_lines({"adapters": {"ranks": {"budgett": 5}}}) == [
        "unknown key 'adapters.ranks.budgett'; did you mean 'adapters.ranks.budget'? Valid keys in "
        "adapters.ranks: strategy, budget, shares, min_rank, max_rank, calibration_batches"]
    assert problem_lines({"export": {"int4": {"blocksize": 64}}}) == [
        "unknown key 'export.int4.blocksize'; did you mean 'export.int4.block_size'? Valid keys in export.int4: "
        "block_size, symmetric, accuracy_level, search, algorithms, max_tries"]


def test_a_key_near_two_names_suggests_only_the_nearest():
    (line,) = problem_lines({"adapters": {"ranks": {"mid_rank": 2}}})  # near min_rank and max_rank
    assert line.startswith("unknown key 'adapters.ranks.mid_rank'; did you mean 'adapters.ranks.min_rank'? Valid")


def test_an_unknown_key_with_no_near_name_still_lists_the_valid_keys():
    assert problem_lines({"train": {"zzz": 1}}) == [
        "unknown key 'train.zzz'. Valid keys in train: max_steps, epochs, lr, batch_size, grad_accumulation, seed, "
        "weight_decay, max_grad_norm, time_reversal, batching, warmup_steps, log_every, checkpoint_every, keep"]
    assert problem_lines({"zzz": 1}) == [
        "unknown key 'zzz'. Valid keys: name, task, model, data, frames, adapters, train, eval, generation, export"]


def test_an_unknown_key_under_a_mapping_of_gates_is_named():
    assert problem_lines({"export": {"parity": {"fp32": {"min_cosin": 0.9}}}}) == [
        "unknown key 'export.parity.fp32.min_cosin'"]


def test_problems_in_several_sections_are_all_listed_in_order():
    lines = problem_lines({"frames": {"k": 0}, "train": {"batch_size": 1}, "export": {"threads": 0}})
    assert [x.split(":")[0] for x in lines] == ["frames.k", "train.batch_size", "export.threads"]


def test_the_source_names_the_file_the_problems_are_in(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("frames:\n  k: 0\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value).startswith(f"{path}: 1 problem(s)\n  - frames.k:")


def test_an_empty_file_is_the_default_recipe_and_a_list_file_says_what_it_got(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty) == Recipe()
    listy = tmp_path / "list.yaml"
    listy.write_text("- model\n- data\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(listy)
    assert str(exc.value) == f"{listy} must be a mapping of sections (model, data, ...), got list"
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "gone.yaml")
    assert str(exc.value) == (f"recipe file not found: {tmp_path / 'gone.yaml'}. "
                              "Check the path (recipes live in recipes/).")


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("-2E3", -2000.0), ("+3e+2", 300.0), (".5e1", 5.0), ("1.e2", 100.0), ("2.5e-3", 2.5e-3),
])
def test_scientific_notation_is_a_float(text, value):
    parsed = parse_value(text)
    assert isinstance(parsed, float) and parsed == pytest.approx(value)


@pytest.mark.parametrize("text", ["1e", "e5", "1e-4x", "x1e-4", "run-1e3", "[unclosed", "a: b: c"])
def test_text_that_is_not_a_number_or_not_yaml_stays_text(text):
    assert parse_value(text) == text


def test_override_keys_are_stripped_and_deep_non_sections_are_named():
    raw: dict = {"train": {"lr": 1.0}}
    apply_override(raw, " train.lr = 0.5")
    assert raw == {"train": {"lr": 0.5}}
    with pytest.raises(RecipeError) as exc:
        apply_override(raw, "train.lr.x=1")
    assert str(exc.value) == "--set 'train.lr.x=1': train.lr is not a section"
    with pytest.raises(RecipeError) as exc:
        apply_override(raw, "train.lr")
    assert str(exc.value) == "--set 'train.lr': expected KEY=VALUE, e.g. --set train.lr=1e-4"


def test_an_override_value_may_hold_an_equals_sign():
    raw: dict = {}
    apply_override(raw, "name=a=b")
    assert raw == {"name": "a=b"}


def test_the_gate_of_a_variant_fills_what_the_recipe_leaves_out():
    export = validate_recipe({"export": {"parity": {"int8": {"min_cosine": 0.995},
                                                    "int4": {"max_r1_drop": 5.0}}}}).export
    assert export.gate("int8").model_dump() == {"min_cosine": 0.995, "max_r1_drop": 1.0}
    assert export.gate("int4").model_dump() == {"min_cosine": 0.98, "max_r1_drop": 5.0}
    for variant, gate in DEFAULT_GATES.items():  # a variant the recipe does not mention: the defaults
        if variant not in ("int8", "int4"):
            assert export.gate(variant).model_dump() == gate


def test_a_run_length_comes_from_steps_epochs_or_the_default():
    steps = validate_recipe({"train": {"max_steps": 7, "grad_accumulation": 4}}).train
    assert steps.total_steps(batches_per_epoch=100) == 7
    epochs = validate_recipe({"train": {"epochs": 2, "grad_accumulation": 3}}).train
    assert epochs.total_steps(batches_per_epoch=10) == 6  # 20 batches, 3 per step: 6 full steps
    tiny = validate_recipe({"train": {"epochs": 1, "grad_accumulation": 4}}).train
    assert tiny.total_steps(batches_per_epoch=2) == 1  # fewer batches than one step takes: still one step
    assert validate_recipe({}).train.total_steps(batches_per_epoch=3) == DEFAULT_MAX_STEPS == 200


def test_the_dumped_recipe_reads_in_the_schemas_order():
    text = dump_recipe(validate_recipe({"name": "mine", "export": {"variants": ["int4"]}}))
    top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top == ["name", "task", "model", "data", "frames", "adapters", "train", "eval", "generation", "export"]
    assert text.startswith("name: mine\n")
    assert yaml.safe_load(text)["export"]["variants"] == ["int4"]
