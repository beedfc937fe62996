"""The video-llm family end to end: the built-in tiny-video-llm, caption and QA fine-tunes through the same
run dir as retrieval, the adapter reloaded exactly as trained, `vqtool base video-llm` and `adapters plan`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import CAPTION_RECIPE, QA_RECIPE, TINY_OVERRIDES
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe


def test_builtin_tiny_video_llm_holds_tiny_video_clips_vision_tower():
    """The tower follows tiny-video-clip: after re-pretraining that one, rerun scripts/make_tiny_video_llm.py."""
    from toolchain.models.build import base_info

    llm = load_file(str(base_info("tiny-video-llm", "video-llm").path + "/model.safetensors"))
    clip = load_file(str(base_info("tiny-video-clip").path + "/model.safetensors"))
    # transformers saves LlavaOnevision with its checkpoint names ("vision_tower.") or its module paths ("model.vision_tower.")
    tower = {k.removeprefix("model.").removeprefix("vision_tower."): v for k, v in llm.items()
             if k.removeprefix("model.").startswith("vision_tower.")}
    own = {k.removeprefix("vision_model."): v for k, v in clip.items() if k.startswith("vision_model.")}
    assert tower.keys() == own.keys() and len(tower) > 0
    assert all(torch.equal(tower[k], own[k]) for k in tower), "rerun: python scripts/make_tiny_video_llm.py"


@pytest.mark.slow
def test_caption_run_dir_reads_like_a_retrieval_one(tiny_caption_run):
    run = tiny_caption_run
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "adapter", "ranks.json", "metrics.jsonl", "eval.json",
                                               "eval_base.json", "checkpoints"}
    assert {p.name for p in (run / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                             "temporal.safetensors", "temporal.json"}
    result = json.loads((run / "eval.json").read_text())
    assert result["task"] == "captioning" and result["steps"] == 4 and result["eval_clips"] == 48
    for side in ("base", "finetuned"):
        assert {"bleu4", "cider_d", "rouge_l", "direction_accuracy", "predictions"} <= set(result[side])
        assert len(result[side]["predictions"]) == 48
    assert json.loads((run / "eval_base.json").read_text()) == result["base"]
    ranks = json.loads((run / "ranks.json").read_text())
    assert set(ranks["groups"]) == {"vision", "fusion", "decoder"} and ranks["total"] == result["trainable_params"]


@pytest.mark.slow
def test_saved_adapter_loads_back_and_captions_as_evaluated(tiny_caption_run, tiny_caption_recipe):
    from toolchain.data.splits import load_data, read_splits
    from toolchain.models.assemble import load_as_trained, model_info
    from toolchain.tasks import TASKS

    recipe = load_recipe(tiny_caption_run / "recipe.yaml")
    info = model_info(recipe)
    model = load_as_trained(tiny_caption_run, recipe, info)
    report = Reporter(quiet=True)
    _, evalset = load_data(recipe, read_splits(recipe, report), model.preparer(), report)
    task = TASKS["captioning"]
    again = task.evaluate(model, task.prepare(recipe, info, model, evalset, "cpu"), recipe)
    assert again == json.loads((tiny_caption_run / "eval.json").read_text())["finetuned"]


@pytest.mark.slow
def test_qa_fine_tune_on_a_composed_base(run_cli, shapes_data, tmp_path):
    """`vqtool base video-llm` (tiny-video-clip's tower + a tiny Llama) then a QA fine-tune on it."""
    from toolchain.models.compose_llm import save_tiny_decoder
    from toolchain.train import finetune

    base = tmp_path / "base"
    proc = run_cli("base", "video-llm", "tiny-video-clip", save_tiny_decoder(tmp_path / "decoder"), base)
    assert proc.returncode == 0, proc.stderr
    again = run_cli("base", "video-llm", "tiny-video-clip", tmp_path / "decoder", base)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    sets = [*TINY_OVERRIDES, f"data.train={shapes_data / 'train_qa.jsonl'}", f"data.eval={shapes_data / 'eval_qa.jsonl'}",
            f"model.name_or_path={base}", "generation.max_new_tokens=2"]
    result = finetune(load_recipe(QA_RECIPE, sets), tmp_path / "run", False, Reporter(quiet=True))
    assert result["task"] == "qa" and result["eval_captions"] == 144 and result["finetuned"]["questions"] == 144
    assert set(result["finetuned"]["by_type"]) == {"colour", "shape", "direction"}
    row = result["finetuned"]["predictions"][2]
    assert row["type"] == "direction" and row["question"].startswith("which way does the")


def test_adapters_plan_shows_vision_fusion_decoder(run_cli):
    shares = "adapters.ranks.shares={vision: 0.3, fusion: 0.1, decoder: 0.6}"
    out = run_cli("adapters", "plan", CAPTION_RECIPE, "--set", "adapters.ranks.strategy=manual", "--set", shares,
                  "--set", "adapters.ranks.budget=30000", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert list(plan["groups"]) == ["vision", "fusion", "decoder"]
    assert abs(plan["groups"]["decoder"]["params"] / plan["total"] - 0.6) < 0.03
    table = run_cli("adapters", "plan", CAPTION_RECIPE)
    assert table.returncode == 0 and "decoder" in table.stdout and "model.language_model." in table.stdout
    bad = run_cli("adapters", "plan", CAPTION_RECIPE, "--set", "adapters.ranks.strategy=manual",
                  "--set", "adapters.ranks.shares={vision: 0.5, text: 0.5}")
    assert bad.returncode == 2 and "adapters.ranks.shares.text" in bad.stderr and "Traceback" not in bad.stderr



@pytest.mark.slow
def test_merged_float32_video_llm_computes_what_was_trained(tiny_caption_run):
    """What the export builds on: the 4-bit base dequantized as trained, static LoRA merged, the temporal
    branch kept as a side path, gives the same video tokens and the same greedy captions."""
    from export.merge import merged_model
    from toolchain.adapters.temporal import TemporalSideBranch
    from toolchain.models.video_llm import greedy_generate

    trained, merged, recipe, info = merged_model(tiny_caption_run)
    assert any(isinstance(m, TemporalSideBranch) for m in merged.modules())
    assert not [n for n, m in merged.named_modules() if type(m).__name__ == "Linear4bit"]
    frames = torch.randint(0, 256, (2, 12, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = trained.encode_frames(frames)[0], merged.encode_frames(frames)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    fmt = trained.prompt_format(recipe.generation.template(recipe.task))
    prompt = [fmt.video_token_id] * fmt.video_tokens + [7, 8]
    runs = [greedy_generate(m, t, [prompt, prompt], 6, fmt.eos_token_id, fmt.pad_token_id) for m, t in ((trained, a), (merged, b))]
    assert runs[0] == runs[1]
