"""Data-parallel training on several processes: torch's launcher starts them, accelerate runs DDP.

`vqtool finetune RECIPE --processes N` re-runs the same command under `torch.distributed.run`
(torchrun, what `accelerate launch --multi_gpu` uses underneath); in each worker `WORLD_SIZE` is set
and `accelerate.Accelerator` joins the process group (gloo on CPU, nccl on GPUs) and wraps the loss
module in DistributedDataParallel. Launching with `accelerate launch -m toolchain
finetune ...` or `torchrun` works the same way. Only the frozen (4-bit) base is left out of DDP:
every rank builds it identically from the same file, and broadcasting packed bitsandbytes tensors
buys nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import torch
from torch import nn

from toolchain.errors import VqtoolError


class Processes:
    """What training needs to know about its peers; `Processes()` is the single-process case."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.is_main = self.rank == 0
        self.device = str(accelerator.device) if accelerator else None
        self.evals_run = 0  # how many evaluations this process ran (the main one only, by design)

    def wait(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around the module (frozen parameters and buffers left out); itself with one process."""
        if not self.accelerator:
            return module
        from torch.nn.parallel import DistributedDataParallel

        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        return self.accelerator.prepare(module)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes (every process gets it, so all take the same decisions)."""
        return self.accelerator.reduce(value, "mean") if self.accelerator else value

    def gather(self, obj) -> list:
        """One picklable value per process, in rank order, on every process."""
        if not self.accelerator:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


class LossModule(nn.Module):
    """`loss_fn(model, *inputs)` as a module, so DDP sees a forward call and syncs the gradients."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *inputs):
        return self.loss_fn(self.model, *inputs)


def current() -> Processes:
    """Join the process group when launched as a worker (WORLD_SIZE > 1); otherwise one process."""
    if not is_worker():
        return Processes()
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # A recipe may leave trainable parameters out of the loss (e.g. LoRA on a module the video-text path skips).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Processes(Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp]))


def is_worker() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shard(stream, rank: int, world: int):
    """Rank r of W takes batches r, r+W, r+2W ... of one shared stream: disjoint, and resumable by count."""
    while True:
        group = [next(stream) for _ in range(world)]
        yield group[rank]


def parameters_digest(model: nn.Module) -> str:
    """sha256 of the trainable parameters' bytes: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def launch(processes: int, argv: list[str]) -> None:
    """Run `vqtool ARGV` in `processes` workers (torch.distributed.run, a free local port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "toolchain", *argv]  # each worker runs the same `vqtool` command line (toolchain/__main__.py)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise WorkersFailed(f"{processes} training processes failed (exit code {code}); their messages are above")


class WorkersFailed(VqtoolError):
    exit_code = 1
