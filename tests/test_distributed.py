"""`vqtool finetune --processes 2`: two CPU processes (gloo) train one adapter through accelerate's DDP."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TASK_RECIPES, TINY_OVERRIDES, data_overrides
from toolchain.distributed import LossModule, Processes, parameters_digest, shard
from toolchain.data.batches import batch_stream


def test_shards_are_disjoint_and_cover_the_stream():
    n_ranks, per_rank = 3, 4
    ranks = [shard(batch_stream(12, 2, seed=1), r, n_ranks) for r in range(n_ranks)]
    got = [[next(s) for _ in range(per_rank)] for s in ranks]
    single = batch_stream(12, 2, seed=1)
    expected = [next(single) for _ in range(n_ranks * per_rank)]
    for i in range(per_rank):
        for r in range(n_ranks):
            assert torch.equal(got[r][i], expected[i * n_ranks + r])


def test_single_process_is_the_plain_path():
    procs = Processes()
    assert (procs.rank, procs.world, procs.is_main, procs.device) == (0, 1, True, None)
    model = torch.nn.Linear(2, 1)
    wrapped = procs.wrap(LossModule(model, lambda m, x: m(x).sum()))
    assert isinstance(wrapped, LossModule)
    procs.backward(wrapped(torch.ones(3, 2)))
    assert model.weight.grad is not None and procs.gather("x") == ["x"]


def test_parameters_digest_sees_trainable_changes_only():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    before = parameters_digest(model)
    with torch.no_grad():
        model[0].weight.add_(1)
    assert parameters_digest(model) == before
    with torch.no_grad():
        model[1].bias.add_(1e-7)
    assert parameters_digest(model) != before


def absolute_rows(jsonl, limit=None) -> list[dict]:
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()[:limit]]
    return [{**r, "video": str(jsonl.parent / r["video"])} for r in rows]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASK_RECIPES))
def test_two_cpu_processes_train_one_adapter_and_agree(run_cli, shapes_data, tmp_path, task):
    """Also the end-to-end bad-input run: unreadable training files are skipped and listed once."""
    from test_bad_inputs import write_bad_files

    bad = write_bad_files(tmp_path, shapes_data / absolute_rows(shapes_data / "train.jsonl", 1)[0]["video"])
    write_jsonl(tmp_path / "train.jsonl", absolute_rows(shapes_data / "train.jsonl")
                + [{"video": str(tmp_path / name), "caption": "a red circle moves left"} for name in bad])
    write_jsonl(tmp_path / "eval.jsonl", absolute_rows(shapes_data / "eval.jsonl", 8))
    run_dir = tmp_path / "runs" / "ddp"
    sets = [*TINY_OVERRIDES, *data_overrides(tmp_path), "train.max_steps=3", "train.checkpoint_every=2"]
    proc = run_cli("finetune", TASK_RECIPES[task], "--output-dir", run_dir, "--processes", "2",
                   *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run written to") == 1  # one summary, from the main process
    assert "2 processes" in proc.stderr
    # One adapter, written once, in place; no partial or temp dirs left beside it.
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["ddp"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [info] = [r for r in rows if r.get("event") == "processes"]
    assert info["world_size"] == 2
    digests = info["trainable_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical replicas after training
    assert info["evals_run"] == [2, 0]  # base and fine-tuned eval, on the main process only
    assert [r["step"] for r in rows if "step" in r] == [2, 3]  # log_every=2 and the last step, logged once
    # Skipped files: listed once each in metrics.jsonl, eval.json and the end-of-run summary.
    listed = sorted(r["video"] for r in rows if r.get("event") == "skipped")
    assert listed == sorted(str(tmp_path / name) for name in bad)
    assert sorted(s["video"] for s in json.loads((run_dir / "eval.json").read_text())["skipped"]) == listed
    assert f"skipped {len(bad)} unreadable video(s)" in proc.stderr
    for video in listed:
        assert proc.stderr.count(f"  {video}: ") == 1
    # The checkpoint of the main process is what both ranks hold.
    from safetensors.torch import load_file

    final = load_file(str(run_dir / "checkpoints" / "step-00000003" / "trainable.safetensors"))
    assert len(final) > 0 and json.loads((run_dir / "checkpoints" / "step-00000003" / "state.json").read_text())["processes"] == 2
