"""Recipe files: read YAML, apply dotted `--set` overrides, validate into a Recipe, dump it back;
every problem reported at once, naming the key and what is allowed."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from toolchain.errors import RecipeError
from toolchain.recipe import Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `key.sub=value` overrides and validate it all at once."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}. Check the path (recipes live in recipes/).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Set a dotted key from `--set a.b=value`; the value is parsed as YAML (1e-4, true, [a, b])."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = parse_value(text)


SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def parse_value(text: str) -> Any:
    """YAML semantics, except that 1e-4 is a number (YAML 1.1 wants 1.0e-4)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and SCIENTIFIC.match(value):
        return float(value)
    return value


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise RecipeError(f"{source}: {len(lines)} problem(s)\n" + "\n".join(f"  - {x}" for x in lines)) from None


def describe_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'" + suggest(loc)
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {err['input']!r} is not allowed; choose one of {allowed}"
    return f"{key}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"]


def suggest(loc: list[str]) -> str:
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is None:
        return ""
    names = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], names, n=1)
    where = ".".join(loc[:-1])
    hint = f"; did you mean '{'.'.join(loc[:-1] + close[:1])}'?" if close else ""
    return f"{hint or '.'} Valid keys{' in ' + where if where else ''}: {', '.join(names)}"


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
