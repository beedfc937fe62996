"""train.max_grad_norm: the trainer's gradient clipping and its recipe key."""

import pytest
import torch
from conftest import SHIPPED_RECIPE

from toolchain.errors import RecipeError
from toolchain.distributed import Processes
from toolchain.progress import Reporter
from toolchain.recipe import TrainSection, load_recipe
from toolchain.tasks.task import Task
from toolchain.train import clip_gradients, train_loop


def optimizer_with_grads(*grads: torch.Tensor) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return torch.optim.AdamW(params + [torch.nn.Parameter(torch.zeros(2))], lr=1.0)  # one param without grad


def grad_norm(opt) -> float:
    return float(torch.sqrt(sum((p.grad ** 2).sum() for g in opt.param_groups for p in g["params"] if p.grad is not None)))


def test_large_gradients_are_scaled_to_the_norm_keeping_their_direction():
    opt = optimizer_with_grads(torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]]))  # total norm 5
    clip_gradients(opt, 1.0)
    assert grad_norm(opt) == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(opt.param_groups[0]["params"][0].grad, torch.tensor([0.6, 0.0]), atol=1e-4)


def test_small_gradients_and_off_leave_them_alone():
    opt = optimizer_with_grads(torch.tensor([0.3, 0.4]))
    clip_gradients(opt, 1.0)
    assert grad_norm(opt) == pytest.approx(0.5, rel=1e-5)
    big = optimizer_with_grads(torch.tensor([30.0, 40.0]))
    clip_gradients(big, None)
    assert grad_norm(big) == pytest.approx(50.0, rel=1e-5)


def test_recipe_key_defaults_off_and_rejects_bad_values():
    assert load_recipe(SHIPPED_RECIPE).train.max_grad_norm is None
    assert load_recipe(SHIPPED_RECIPE, ["train.max_grad_norm=0.5"]).train.max_grad_norm == 0.5
    for bad in ("0", "-1", "inf"):
        with pytest.raises(RecipeError, match="max_grad_norm"):
            load_recipe(SHIPPED_RECIPE, [f"train.max_grad_norm={bad}"])


def one_step_update(tmp_path, max_grad_norm: float | None) -> float:
    """Run train_loop for one step on a toy task whose gradient is ~1e3 per element; return the largest
    parameter change. Adam divides by sqrt(v) + 1e-8, so its first step moves each weight by ~lr for any
    gradient well above 1e-8, and by much less once the clip has scaled the gradient down to ~1e-10."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    x = torch.full((8, 4), 1.0e3)

    def batches(data, stream, device):
        while True:
            next(stream)
            yield (x,)

    task = Task(name="toy", prepare=None, batches=batches, loss=lambda m, inp: m(inp).pow(2).mean() / 1e3,
                evaluate=None, summary=None)
    cfg = TrainSection(max_steps=1, lr=0.1, batch_size=8, warmup_steps=0, checkpoint_every=0,
                       max_grad_norm=max_grad_norm)
    work = tmp_path / str(max_grad_norm)
    work.mkdir()
    assert train_loop(task, model, list(range(8)), cfg, work, Reporter(quiet=True), Processes()) == 1
    return float((model.weight.detach() - before).abs().max())


def test_train_loop_clips_before_the_optimizer_step(tmp_path):
    # cosine at step 1 of 1 with no warm-up: the factor is 1, so the unclipped step is ~lr = 0.1
    unclipped = one_step_update(tmp_path, None)
    clipped = one_step_update(tmp_path, 1e-10)
    assert unclipped == pytest.approx(0.1, rel=0.01)
    assert clipped < unclipped / 50
