"""The real `vqtool` command: clean errors (exit 2, no traceback) and the end-to-end finetune -> export -> infer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import BLOCK_TORCH, SHIPPED_RECIPE, TINY_K, TINY_OVERRIDES, TINY_STEPS, cli_env
from toolchain.recipe import load_recipe



def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def assert_clean_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr:\n{proc.stderr}"


def run_main_in_python(prelude: str, argv: list[str], after: str) -> subprocess.CompletedProcess:
    """Call toolchain.cli.main() in a fresh interpreter, then run `after` (exit code in `code`)."""
    code = prelude + textwrap.dedent(f"""
        import sys
        from toolchain.cli import main
        sys.argv = ["vqtool", *{argv!r}]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    """) + textwrap.dedent(after)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)


def test_help_lists_commands(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("finetune", "export", "infer", "recipe", "data"):
        assert command in proc.stdout


def test_recipe_validate_ok(run_cli):
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE, *sets("frames.k=4"))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "K=4" in proc.stdout


def test_recipe_validate_show_prints_resolved_yaml(run_cli, tmp_path):
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE, "--show", *sets("train.lr=1e-4", "adapters.rank=4"))
    assert proc.returncode == 0, proc.stderr
    yaml_text = proc.stdout.rsplit("\n", 2)[0]
    resolved = yaml.safe_load(yaml_text)
    assert resolved["train"]["lr"] == pytest.approx(1e-4) and resolved["adapters"]["rank"] == 4
    (tmp_path / "again.yaml").write_text(yaml_text)
    assert load_recipe(tmp_path / "again.yaml").adapters.rank == 4


def test_recipe_validate_unknown_key(run_cli):
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE, *sets("train.lrr=1e-4"))
    assert_clean_error(proc, "train.lrr", "did you mean 'train.lr'?")
    assert proc.stdout == ""


def test_recipe_validate_bad_literal_and_several_problems(run_cli):
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE,
                   *sets("adapters.quantization=nf3", "train.lrr=1", "frames.k=0"))
    assert_clean_error(proc, "3 problem(s)", "adapters.quantization", "'nf4'", "'fp4'", "'none'",
                       "train.lrr", "frames.k")


def test_recipe_validate_max_steps_and_epochs(run_cli):
    # The shipped recipe sets train.max_steps, so adding epochs is the classic conflict.
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE, *sets("train.epochs=2"))
    assert_clean_error(proc, "train.max_steps", "train.epochs")
    proc = run_cli("recipe", "validate", SHIPPED_RECIPE, *sets("train.epochs=2", "train.max_steps=null"))
    assert proc.returncode == 0, proc.stderr


def test_recipe_validate_set_without_equals(run_cli):
    assert_clean_error(run_cli("recipe", "validate", SHIPPED_RECIPE, "--set", "train.lr"), "KEY=VALUE")


def test_recipe_validate_missing_file(run_cli, tmp_path):
    assert_clean_error(run_cli("recipe", "validate", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_error_message_is_printed_verbatim(run_cli, tmp_path):
    # Paths and messages may contain brackets; they must not be eaten as console markup.
    missing = tmp_path / "[v2]" / "recipe.yaml"
    assert_clean_error(run_cli("recipe", "validate", missing), str(missing))


def test_finetune_bad_key_fails_before_any_model_loads(run_cli, tmp_path):
    target = tmp_path / "run"
    proc = run_cli("finetune", SHIPPED_RECIPE, "--output-dir", target, *sets("train.lrr=1e-4"))
    assert_clean_error(proc, "train.lrr", "did you mean 'train.lr'?")
    assert not target.exists() and not list(tmp_path.iterdir())
    # In-process: the failure happens before torch (and so any model) is even imported.
    after = """
        assert code == 2, code
        assert "torch" not in sys.modules, "torch was imported before the recipe was validated"
        print("checked")
    """
    proc = run_main_in_python("", ["finetune", str(SHIPPED_RECIPE), "--output-dir", str(target),
                                   "--set", "train.lrr=1e-4"], after)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("checked")
    assert not target.exists()


def test_finetune_without_train_extra_names_the_install_command(tmp_path):
    target = tmp_path / "run"
    proc = run_main_in_python(BLOCK_TORCH, ["finetune", str(SHIPPED_RECIPE), "--output-dir", str(target)],
                              "sys.exit(code)")
    assert_clean_error(proc, "'torch'", "pip install 'vqtool[train]'")
    assert not target.exists()


def test_infer_on_a_missing_export_dir(run_cli, tmp_path):
    proc = run_cli("infer", tmp_path / "nothing", "--video", "x.mp4", "--text", "a")
    assert_clean_error(proc, "manifest.json", "vqtool export")


def test_export_of_a_non_run_dir(run_cli, tmp_path):
    proc = run_cli("export", tmp_path, "--output-dir", tmp_path / "out")
    assert_clean_error(proc, "recipe.yaml", "vqtool finetune")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_end_to_end_finetune_export_infer(run_cli, tmp_path):
    """The demo flow on a fresh dir: data is synthesized on first use, defaults pick runs/ and exports/."""
    work = tmp_path
    overrides = sets(*TINY_OVERRIDES, "data.train=data/train.jsonl", "data.eval=data/eval.jsonl",
                     "data.synth_videos=12")
    proc = run_cli("finetune", SHIPPED_RECIPE, *overrides, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = work / "runs" / "shapes-tiny"
    assert "runs/shapes-tiny" in proc.stdout

    # Run dir: resolved recipe, PEFT adapter, metrics, eval.
    assert (work / "data" / "train.jsonl").is_file() and (work / "data" / "eval.jsonl").is_file()
    recipe = load_recipe(run_dir / "recipe.yaml")
    assert recipe.train.max_steps == TINY_STEPS and recipe.frames.k == TINY_K
    assert recipe.data.synthesize_if_missing is False and recipe.data.train.startswith("/")
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == recipe.adapters.rank and config.get("peft_type") == "LORA"
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "step" in r]
    assert steps and steps[-1] == TINY_STEPS and steps == sorted(steps)
    assert all(r["loss"] == r["loss"] and r["loss"] >= 0 for r in rows if "loss" in r)  # finite, not NaN
    result = json.loads((run_dir / "eval.json").read_text())
    for phase in ("base", "finetuned"):
        assert 0.0 <= result[phase]["t2v"]["r1"] <= 100.0
        assert 0.0 <= result[phase]["v2t"]["r1"] <= 100.0
    assert result["eval_clips"] == 48 and result["train_clips"] == 12 and result["steps"] == TINY_STEPS

    proc = run_cli("export", "runs/shapes-tiny", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "Parity report: PASSED" in proc.stdout
    export_dir = work / "exports" / "shapes-tiny"
    names = {p.name for p in export_dir.iterdir()}
    assert {"video_encoder.onnx", "text_encoder.onnx", "video_encoder.int8.onnx", "text_encoder.int8.onnx",
            "tokenizer.json", "manifest.json", "parity.json", "parity.md"} <= names
    assert json.loads((export_dir / "parity.json").read_text())["passed"] is True

    videos = ["data/videos/eval_0000.mp4", "data/videos/eval_0001.mp4"]
    texts = ["a red circle moves left", "a red circle moves right", "a blue square moves up"]
    args = ["infer", "exports/shapes-tiny", "--variant", "int8", "--json"]
    args += [a for v in videos for a in ("--video", v)] + [a for t in texts for a in ("--text", t)]
    proc = run_cli(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["scores"]) == 2 and all(len(r) == 3 for r in out["scores"])
    assert [len(r) for r in out["frame_indices"]] == [TINY_K, TINY_K]

    # Re-running into the same run dir: refused without --force (and the run is untouched) ...
    before = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    proc = run_cli("finetune", SHIPPED_RECIPE, *overrides, cwd=work)
    assert_clean_error(proc, "runs/shapes-tiny", "--force")
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == before
    # ... and replaced with it, leaving no temp or old dirs behind.
    proc = run_cli("finetune", SHIPPED_RECIPE, *overrides, "--force", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "eval.json").is_file() and (run_dir / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["shapes-tiny"]
    proc = run_cli("export", "runs/shapes-tiny", cwd=work)
    assert_clean_error(proc, "exports/shapes-tiny", "--force")
