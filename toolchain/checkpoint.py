"""Resumable training: the in-progress run dir, atomic checkpoints, and the checks a resume makes.

A run is built in `runs/.NAME.partial/` (beside its final place, same filesystem) and renamed to
`runs/NAME/` when it is complete, so `runs/NAME` is either absent or whole. Unlike a throw-away temp
dir, the partial dir survives a crash: it holds the resolved `recipe.yaml`, `metrics.jsonl`, the
base model's eval and `checkpoints/step-NNNNNNNN/`, each written as a hidden temp dir and renamed,
so a checkpoint dir that exists under its final name is complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from toolchain import rundir
from toolchain.errors import CheckpointError, RecipeError
from toolchain.recipe import Recipe, dump_recipe, load_recipe
from toolchain.rundir import run_dir_of, work_dir  # noqa: F401  (run_dir_of re-exported with the resume helpers)

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d{8})$")
# Keys that may change between a run and its resume without changing what is trained.
HARMLESS_PREFIXES = ("name", "train.log_every", "train.checkpoint_every", "train.keep", "eval.", "export.",
                     "data.synthesize_if_missing", "data.synth_videos", "data.synth_seed", "generation.max_new_tokens")


def open_work_dir(recipe: Recipe, run_dir: Path, force: bool, resume: bool) -> Path:
    """Create the partial dir for a fresh run, or check that a resume continues the same recipe."""
    work = work_dir(run_dir)
    if resume:
        if not (work / "recipe.yaml").is_file():
            raise CheckpointError(f"nothing to resume: no interrupted run in {work}. "
                                  f"Start it without --resume: vqtool finetune RECIPE --output-dir {run_dir}")
        check_same_recipe(load_recipe(work / "recipe.yaml"), recipe, work)
        return work
    if work.exists() and not force:
        newest = latest_checkpoint(work)
        at = f"newest checkpoint: step {checkpoint_step(newest)}" if newest else "no checkpoint yet"
        raise CheckpointError(f"an interrupted run is in {work} ({at}); continue it with --resume, "
                              "or pass --force to discard it and start over")
    if work.exists():
        shutil.rmtree(work)
    (work / CHECKPOINTS).mkdir(parents=True)
    rundir.write_text(work / "recipe.yaml", dump_recipe(recipe))
    return work


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """Dotted keys whose values differ, except those that cannot change the training."""
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in keys if not any(k == p or k.startswith(p if p.endswith(".") else p + ".") for p in HARMLESS_PREFIXES)]


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_same_recipe(old: Recipe, new: Recipe, work: Path) -> None:
    diff = recipe_differences(old, new)
    if diff:
        a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
        what = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise RecipeError(f"--resume: the recipe differs from the interrupted run's ({work / 'recipe.yaml'}) in "
                          f"{', '.join(diff)} ({what}). Resume with the same recipe, or start over with --force")


def checkpoint_step(path: Path | None) -> int:
    return int(STEP_DIR.match(path.name).group(1)) if path is not None else 0


def list_checkpoints(work: Path) -> list[Path]:
    """Complete checkpoints (temp dirs have a leading dot and never match), oldest first."""
    root = work / CHECKPOINTS
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)] if root.is_dir() else []
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(work: Path) -> Path | None:
    found = list_checkpoints(work)
    return found[-1] if found else None


def check_processes(work: Path, world: int) -> None:
    """A checkpoint resumes only with the process count that wrote it (the data order depends on it)."""
    newest = latest_checkpoint(work)
    if newest is None:
        return
    wrote = json.loads((newest / "state.json").read_text())["processes"]
    if wrote != world:
        raise CheckpointError(f"{newest} was written by {wrote} training process(es), this run has {world}; "
                              f"resume with --processes {wrote}, or start over with --force")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch RNG states as tensors; Python's and numpy's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(words), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, words, gauss = plain["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(work: Path, step: int, model, opt, sched, info: dict, keep: int) -> Path:
    """Write checkpoints/step-NNNNNNNN atomically (temp dir, fsync, rename) and keep the newest `keep`."""
    root = work / CHECKPOINTS
    final, tmp = root / f"step-{step:08d}", root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    tensors, plain = rng_state()
    save_file(tensors, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **info, "rng": plain}) + "\n")
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; a run dir should read like any other directory
        fsync(f)
    if final.exists():  # the same step again after a resume: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    fsync(root)
    for old in list_checkpoints(work)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk, so a power cut cannot leave a renamed-but-empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, model, opt, sched) -> dict:
    """Put a checkpoint's weights, optimizer, scheduler and RNG states back; returns its state.json."""
    saved = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise CheckpointError(f"{path} does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
                              "was the recipe or the code changed? Start over with --force")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    states = torch.load(path / "optimizer.pt", weights_only=True)
    opt.load_state_dict(states["optimizer"])
    sched.load_state_dict(states["scheduler"])
    info = json.loads((path / "state.json").read_text())
    restore_rng(load_file(str(path / "rng.safetensors")), info.pop("rng"))
    return info


def rewind_metrics(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step` and earlier resumes; the resumed run logs the rest again."""
    if not path.is_file():
        return
    rows = [(line, json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line, row in rows if row.get("step", step + 1) <= step or row.get("event") == "resumed"]
    rundir.write_text(path, "".join(line + "\n" for line in kept))
