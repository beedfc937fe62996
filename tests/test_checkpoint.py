"""Checkpoints and resume: atomic writes, what a resume checks, and a SIGKILLed fine-tune that resumes exactly."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHIPPED_RECIPE, TASK_RECIPES, TINY_OVERRIDES, cli_env, data_overrides, vqtool_command
from toolchain.checkpoint import (
    CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, open_work_dir, recipe_differences,
    rewind_metrics, run_dir_of, save_checkpoint, work_dir,
)
from toolchain.data.batches import batch_stream
from toolchain.errors import RecipeError
from toolchain.recipe import validate_recipe
from toolchain.train import lr_lambda


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def tiny_training(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen part, like the 4-bit base
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 10))
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        loss = model(torch.randn(5, 3)).pow(2).mean()  # draws from the global RNG: it must be restored too
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_checkpoint_round_trip_continues_bit_exactly(tmp_path):
    model, opt, sched = tiny_training()
    train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path, 3, model, opt, sched, {"processes": 1}, keep=2)
    random.random(), np.random.rand()  # move every RNG on; the checkpoint has the old states
    train_steps(model, opt, sched, 4)
    straight = [p.detach().clone() for p in model.parameters()]
    py_next, np_next = random.random(), np.random.rand()

    resumed, opt2, sched2 = tiny_training()  # same frozen base; the trainable part must come from the checkpoint
    with torch.no_grad():
        for p in resumed.parameters():
            if p.requires_grad:
                p.add_(1.0)
    info = load_checkpoint(latest_checkpoint(tmp_path), resumed, opt2, sched2)
    assert info["step"] == 3 and info["processes"] == 1
    random.random(), np.random.rand()
    train_steps(resumed, opt2, sched2, 4)
    assert sched2.last_epoch == sched.last_epoch == 7
    for a, b in zip(straight, resumed.parameters()):
        assert torch.equal(a, b)
    assert (random.random(), np.random.rand()) == (py_next, np_next)


def test_checkpoint_holds_only_trainable_weights_as_safetensors(tmp_path):
    model, opt, sched = tiny_training()
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {"processes": 1}, keep=1)
    assert set(load_file(str(path / "trainable.safetensors"))) == {"0.bias", "1.weight", "1.bias"}
    states = torch.load(path / "optimizer.pt", weights_only=True)  # no pickled code needed to read it
    assert set(states) == {"optimizer", "scheduler"}


def test_keep_prunes_old_checkpoints_and_ignores_temp_dirs(tmp_path):
    model, opt, sched = tiny_training()
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, model, opt, sched, {"processes": 1}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    # A checkpoint being written when the process died is a hidden temp dir: never picked up.
    (tmp_path / "checkpoints" / ".step-00000010.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000008"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".") and p.name != ".step-00000010.tmp"]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, opt, sched = tiny_training()
    save_checkpoint(tmp_path, 1, model, opt, sched, {"processes": 1}, keep=1)
    other = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(latest_checkpoint(tmp_path), other, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1))


@pytest.mark.parametrize("start", [0, 1, 2, 3, 7, 10])
def test_batch_stream_resumes_at_any_position(start):
    fresh = batch_stream(10, 3, seed=5)
    skipped = [next(fresh) for _ in range(start)]
    resumed = batch_stream(10, 3, seed=5, start=start)
    assert len(skipped) == start
    for _ in range(8):
        assert torch.equal(next(fresh), next(resumed))


def test_recipe_differences_ignore_harmless_keys():
    old = validate_recipe({"train": {"lr": 0.01, "log_every": 5}})
    harmless = validate_recipe({"name": "other", "train": {"lr": 0.01, "log_every": 1, "checkpoint_every": 3, "keep": 9},
                                "eval": {"batch_size": 8}, "export": {"variants": ["fp32"]}})
    assert recipe_differences(old, harmless) == []
    changed = validate_recipe({"train": {"lr": 0.02, "log_every": 5}, "frames": {"k": 4}})
    assert recipe_differences(old, changed) == ["frames.k", "train.lr"]


def test_open_work_dir_fresh_resume_and_refusals(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    recipe = validate_recipe({"train": {"lr": 0.01}})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        open_work_dir(recipe, run_dir, force=False, resume=True)
    work = open_work_dir(recipe, run_dir, force=False, resume=False)
    assert work == tmp_path / "runs" / ".r.partial" == work_dir(run_dir) and (work / "recipe.yaml").is_file()
    assert run_dir_of(work) == run_dir and run_dir_of(run_dir) == run_dir
    # An interrupted run is never silently replaced ...
    with pytest.raises(CheckpointError, match="--resume") as exc:
        open_work_dir(recipe, run_dir, force=False, resume=False)
    assert "--force" in str(exc.value)
    # ... a resume must use the same recipe, and says which keys differ ...
    with pytest.raises(RecipeError) as exc:
        open_work_dir(validate_recipe({"train": {"lr": 0.5}}), run_dir, force=False, resume=True)
    assert "train.lr" in str(exc.value) and "0.01" in str(exc.value) and "0.5" in str(exc.value)
    assert open_work_dir(recipe, run_dir, force=False, resume=True) == work
    # ... and --force starts over.
    (work / "metrics.jsonl").write_text('{"step": 1}\n')
    open_work_dir(recipe, run_dir, force=True, resume=False)
    assert not (work / "metrics.jsonl").exists()


def test_rewind_metrics_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"event": "skipped", "video": "a"}, {"step": 1}, {"event": "resumed", "from_step": 1}, {"step": 2}, {"step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewind_metrics(path, 2)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == [{"step": 1}, {"event": "resumed", "from_step": 1}, {"step": 2}]


# --- the real CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(shapes_data, tmp_path_factory):
    """shapes_data's 12 training clips and 8 of its eval clips (absolute paths): a quicker eval."""
    out = tmp_path_factory.mktemp("small")
    for split, n in (("train", None), ("eval", 8)):
        lines = (shapes_data / f"{split}.jsonl").read_text().splitlines()[:n]
        rows = [json.loads(line) for line in lines]
        for row in rows:
            row["video"] = str(shapes_data / row["video"])
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def tiny_args(data, *extra: str, recipe=SHIPPED_RECIPE) -> list[str]:
    return [str(recipe), *sets(*TINY_OVERRIDES, *data_overrides(data), "train.log_every=1", *extra)]


def adapter_tensors(run_dir) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("adapter_model.safetensors", "temporal.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(run_dir / "adapter" / name)).items()})
    return out


def step_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "step" in r]
    assert steps == sorted(set(steps)), steps  # every step logged once, in order, even across the kill
    return {r["step"]: r["loss"] for r in rows if "step" in r}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASK_RECIPES))
def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_adapter(run_cli, small_data, tmp_path, task):
    from toolchain.progress import Reporter
    from toolchain.recipe import load_recipe
    from toolchain.train import finetune

    steps = ["train.max_steps=30", "train.checkpoint_every=4", "train.keep=2"]
    args = tiny_args(small_data, *steps, recipe=TASK_RECIPES[task])
    killed = tmp_path / "runs" / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*vqtool_command(), "finetune", *args, "--output-dir", str(killed)],
                                env=cli_env(), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while latest_checkpoint(work_dir(killed)) is None and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    at_kill = latest_checkpoint(work_dir(killed))
    assert at_kill is not None and not killed.exists()  # killed mid-training: only the partial dir

    proc = run_cli("finetune", *args, "--output-dir", killed, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr
    assert not work_dir(killed).exists() and (killed / "eval.json").is_file()
    resumed_from = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines() if "resumed" in x]
    assert len(resumed_from) == 1 and 4 <= resumed_from[0]["from_step"] < 30
    assert [p.name for p in list_checkpoints(killed)] == ["step-00000028", "step-00000030"]

    straight = tmp_path / "runs" / "straight"
    recipe = load_recipe(TASK_RECIPES[task], [*TINY_OVERRIDES, *data_overrides(small_data), "train.log_every=1", *steps])
    finetune(recipe, straight, False, Reporter(quiet=True))
    a, b = adapter_tensors(killed), adapter_tensors(straight)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    la, lb = step_losses(killed), step_losses(straight)
    assert la.keys() == lb.keys() == set(range(1, 31))
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-6)
    # Training moved the adapter (LoRA B starts at zero): the match is not between two untouched inits.
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(run_cli, small_data, tmp_path):
    run_dir = tmp_path / "runs" / "diverged"
    proc = run_cli("finetune", *tiny_args(small_data, "train.lr=1e30", "train.checkpoint_every=1", "train.max_steps=6"),
                   "--output-dir", run_dir)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "non-finite" in line[0] and "at step 2" in line[0] and "train.lr" in line[0]
    assert not run_dir.exists()
    kept = list_checkpoints(work_dir(run_dir))
    assert [p.name for p in kept] == ["step-00000001"] and str(kept[0]) in line[0]
    weights = load_file(str(kept[0] / "trainable.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_resume_with_nothing_to_resume_is_a_clean_error(run_cli, tmp_path):
    proc = run_cli("finetune", tmp_path / "runs" / "never", "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nothing to resume" in proc.stderr and "vqtool finetune RECIPE" in proc.stderr


def test_a_checkpoint_resumes_only_with_the_process_count_that_wrote_it(tmp_path):
    from toolchain.checkpoint import check_processes

    model, opt, sched = tiny_training()
    check_processes(tmp_path, 3)  # nothing written yet: any count
    save_checkpoint(tmp_path, 1, model, opt, sched, {"processes": 2}, keep=1)
    check_processes(tmp_path, 2)
    with pytest.raises(CheckpointError, match="--processes 2"):
        check_processes(tmp_path, 1)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_failed_run_keeps_its_partial_dir_only_if_there_is_something_to_resume(tiny_recipe, tmp_path, monkeypatch,
                                                                                   checkpointed):
    import toolchain.train as train
    from toolchain.progress import Reporter

    def fail(recipe, work, report, procs):
        if checkpointed:
            model, opt, sched = tiny_training()
            save_checkpoint(work, 1, model, opt, sched, {"processes": 1}, keep=1)
        raise RuntimeError("boom")

    monkeypatch.setattr(train, "train_and_evaluate", fail)
    run_dir = tmp_path / "runs" / "r"
    with pytest.raises(RuntimeError, match="boom"):
        train.finetune(tiny_recipe, run_dir, False, Reporter(quiet=True))
    assert not run_dir.exists()
    assert work_dir(run_dir).exists() == checkpointed
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ([".r.partial"] if checkpointed else [])
