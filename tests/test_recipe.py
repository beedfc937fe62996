"""Tests for the recipe schema: defaults, error messages that name the key and the fix, --set overrides."""

from __future__ import annotations

import pytest
import yaml

from toolchain.errors import RecipeError, VqtoolError
from toolchain.recipe import (
    DEFAULT_MAX_STEPS,
    Recipe,
    apply_override,
    dump_recipe,
    load_recipe,
    parse_value,
    validate_recipe,
)


def write_recipe(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def problems(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_defaults_validate():
    recipe = validate_recipe({})
    assert recipe == Recipe()
    assert recipe.adapters.quantization == "nf4"
    assert recipe.frames.k == 8 and recipe.frames.decode_max_frames >= recipe.frames.k
    assert set(recipe.export.variants) == {"fp32", "int8"}
    assert recipe.train.total_steps(batches_per_epoch=5) == DEFAULT_MAX_STEPS


def test_dump_round_trips():
    recipe = validate_recipe({"name": "x", "train": {"lr": 0.01, "max_steps": 7}})
    again = validate_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_recipe_error_is_a_vqtool_error():
    assert issubclass(RecipeError, VqtoolError)
    assert RecipeError.exit_code == 2


def test_unknown_key_names_it_and_suggests_the_nearest():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"train": {"lrr": 1e-4}}, source="r.yaml")
    msg = problems(exc)
    assert "r.yaml" in msg
    assert "unknown key 'train.lrr'" in msg
    assert "did you mean 'train.lr'?" in msg
    assert "max_steps" in msg  # the valid keys of the section are listed


def test_unknown_top_level_section_suggests_the_nearest():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"adapter": {"rank": 4}})
    msg = problems(exc)
    assert "unknown key 'adapter'" in msg and "did you mean 'adapters'?" in msg


def test_bad_literal_lists_allowed_values():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"adapters": {"quantization": "nf3"}})
    msg = problems(exc)
    assert "adapters.quantization" in msg and "'nf3'" in msg
    for allowed in ("nf4", "fp4", "int8", "none"):
        assert allowed in msg


def test_bad_variant_in_list_lists_allowed_values():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"export": {"variants": ["fp32", "int3"]}})
    msg = problems(exc)
    assert "export.variants.1" in msg and "'int3'" in msg and "int8" in msg


def test_int4_settings_are_validated_with_the_key_named():
    recipe = validate_recipe({"export": {"variants": ["fp32", "int4"], "int4": {"accuracy_level": 4}}})
    assert recipe.export.int4.accuracy_level == 4 and recipe.export.int4.block_size == 32
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"export": {"int4": {"block_size": 48, "accuracy_level": 5}, "exporter": "jit"}})
    msg = problems(exc)
    assert "power of two" in msg and "48" in msg
    assert "export.int4.accuracy_level" in msg and "export.exporter" in msg and "torchscript" in msg


def test_several_problems_are_reported_together():
    raw = {
        "train": {"lrr": 1.0, "batch_size": 1},
        "adapters": {"quantization": "nf3"},
        "frames": {"k": 0},
    }
    with pytest.raises(RecipeError) as exc:
        validate_recipe(raw)
    msg = problems(exc)
    assert "4 problem(s)" in msg
    for key in ("train.lrr", "train.batch_size", "adapters.quantization", "frames.k"):
        assert key in msg


def test_max_steps_and_epochs_both_set_is_an_error():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"train": {"max_steps": 10, "epochs": 2}})
    msg = problems(exc)
    assert "train.max_steps" in msg and "train.epochs" in msg


def test_epochs_alone_gives_steps_from_batches():
    train = validate_recipe({"train": {"epochs": 3, "grad_accumulation": 2}}).train
    assert train.total_steps(batches_per_epoch=10) == 15


def test_frame_budget_must_fit_decode_limit():
    with pytest.raises(RecipeError) as exc:
        validate_recipe({"frames": {"k": 16, "decode_max_frames": 8}})
    assert "frames.decode_max_frames" in problems(exc) and "frames.k" in problems(exc)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("false", False), ("3", 3), ("0.5", 0.5), ("null", None),
     ("[fp32, int8]", ["fp32", "int8"]), ("all-linear", "all-linear"), ("{a: 1}", {"a": 1})],
)
def test_parse_value_is_yaml(text, value):
    assert parse_value(text) == value


def test_overrides_parse_yaml_values(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"name": "r"})
    recipe = load_recipe(path, [
        "train.lr=1e-4",
        "adapters.double_quant=false",
        "export.variants=[int8]",
        "adapters.target_modules=[q_proj, v_proj]",
        "train.max_steps=12",
    ])
    assert isinstance(recipe.train.lr, float) and recipe.train.lr == pytest.approx(1e-4)
    assert recipe.adapters.double_quant is False
    assert recipe.export.variants == ["int8"]
    assert recipe.adapters.target_modules == ["q_proj", "v_proj"]
    assert recipe.train.max_steps == 12


def test_override_beats_the_file_and_null_clears(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"train": {"max_steps": 100, "lr": 0.1}})
    recipe = load_recipe(path, ["train.max_steps=null", "train.epochs=2"])
    assert recipe.train.max_steps is None and recipe.train.epochs == 2
    assert recipe.train.lr == pytest.approx(0.1)


def test_override_creates_nested_keys():
    raw: dict = {"name": "x"}
    apply_override(raw, "adapters.rank=4")
    apply_override(raw, "a.b.c=true")
    assert raw == {"name": "x", "adapters": {"rank": 4}, "a": {"b": {"c": True}}}


def test_override_creates_a_missing_section_in_a_file(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {"name": "x"})
    assert load_recipe(path, ["frames.k=3"]).frames.k == 3


@pytest.mark.parametrize("item", ["train.lr", "=3", "  =x"])
def test_override_without_key_value_is_an_error(item):
    with pytest.raises(RecipeError) as exc:
        apply_override({}, item)
    assert "KEY=VALUE" in str(exc.value)


def test_override_into_a_value_is_an_error():
    with pytest.raises(RecipeError) as exc:
        apply_override({"name": "x"}, "name.first=y")
    assert "name is not a section" in str(exc.value)


def test_unknown_override_key_is_reported_like_a_file_key(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {})
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, ["train.lrr=1e-4"])
    assert "train.lrr" in str(exc.value) and "did you mean 'train.lr'?" in str(exc.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(exc.value) and "not found" in str(exc.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(bad)
    assert "bad.yaml" in str(exc.value) and "not valid YAML" in str(exc.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(listy)
    assert "mapping" in str(exc.value)
