"""Property tests (hypothesis): the recipe loader, the frame selector and the video reader never fail uncleanly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.data.video import decode_video
from toolchain.errors import RecipeError, VideoReadError
from toolchain.frames import SELECTORS, select_frames
from toolchain.recipe import Recipe, Section, apply_override, load_recipe, validate_recipe

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def schema_keys(model: type[Section] = Recipe) -> list[str]:
    """Every section and field name of the schema, so random recipes often hit real keys."""
    names = []
    for name, field in model.model_fields.items():
        names.append(name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            names += schema_keys(field.annotation)
    return names


KEYS = st.sampled_from(schema_keys()) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["nf4", "uniform", "fp32", "all-linear", "1e-4", "null"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=12)
RECIPES = st.dictionaries(KEYS, VALUES, max_size=6)


@FUZZ
@given(raw=RECIPES)
def test_any_mapping_is_a_recipe_or_a_recipe_error(raw):
    try:
        recipe = validate_recipe(raw)
    except RecipeError as exc:
        assert str(exc).strip()
    else:
        assert isinstance(recipe, Recipe)
        assert recipe.frames.decode_max_frames >= recipe.frames.k and recipe.train.lr > 0


DOTTED = st.lists(KEYS, min_size=1, max_size=3).map(".".join)
OVERRIDES = st.lists(st.tuples(DOTTED, st.text(max_size=12) | SCALARS.map(str)).map("=".join) | st.text(max_size=15),
                     max_size=4)


@FUZZ
@given(raw=RECIPES, overrides=OVERRIDES)
def test_any_overrides_give_a_recipe_or_a_recipe_error(raw, overrides):
    try:
        for item in overrides:
            apply_override(raw, item)
        validate_recipe(raw)
    except RecipeError as exc:
        assert str(exc).strip()


@FUZZ
@given(text=st.text(max_size=200) | RECIPES.map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
def test_any_yaml_file_is_a_recipe_or_a_recipe_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except RecipeError as exc:
        assert str(path) in str(exc) or "problem(s)" in str(exc)


@pytest.mark.parametrize("key", ["train.lr", "train.weight_decay", "adapters.alpha", "adapters.dropout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(key, value):
    section, name = key.split(".")
    with pytest.raises(RecipeError, match=key):
        validate_recipe({section: {name: value}})


@st.composite
def clips(draw):
    b, n = draw(st.integers(1, 3)), draw(st.integers(1, 24))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    pattern = draw(st.sampled_from(["bytes", "still", "flash", "ramp"]))
    if pattern == "bytes":
        data = draw(st.binary(min_size=b * n * h * w * 3, max_size=b * n * h * w * 3))
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(b, n, h, w, 3)
    frames = torch.zeros((b, n, h, w, 3), dtype=torch.uint8)
    if pattern == "flash":  # one bright frame: a single huge motion peak and ties everywhere else
        frames[:, draw(st.integers(0, n - 1))] = 255
    elif pattern == "ramp":
        frames += (torch.arange(n, dtype=torch.int64) * 255 // max(1, n - 1)).to(torch.uint8).view(1, n, 1, 1, 1)
    return frames


@pytest.mark.parametrize("selector", SELECTORS)
@settings(max_examples=60, deadline=None)
@given(frames=clips(), k=st.integers(1, 12))
def test_selector_contract_on_adversarial_clips(selector, frames, k):
    n = frames.shape[1]
    idx = select_frames(frames, k, selector)
    assert idx.shape == (frames.shape[0], k) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    steps = idx[:, 1:] - idx[:, :-1]
    assert bool((steps > 0).all()) if n >= k else bool((steps >= 0).all())
    assert torch.equal(idx, select_frames(frames.clone(), k, selector))  # deterministic
    for i in range(frames.shape[0]):  # a clip's choice does not depend on its batch mates
        assert torch.equal(idx[i], select_frames(frames[i], k, selector))


HEADERS = [b"", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", b"\x1aE\xdf\xa3", b"RIFF\x00\x00\x00\x00AVI LIST",
           b"\x00\x00\x01\xba", b"GIF89a", b"\x89PNG\r\n\x1a\n"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=2048), suffix=st.sampled_from([".mp4", ".webm", ".avi", ".bin"]))
def test_random_bytes_give_frames_or_a_video_read_error(tmp_path, header, body, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(header + body)
    try:
        frames = decode_video(path, max_frames=8)
    except VideoReadError as exc:
        assert exc.path == str(path) and exc.reason
    else:
        assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and len(frames) >= 1
