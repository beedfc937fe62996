"""Peak bytes of live CPU tensors over a phase: what `torch.cuda.max_memory_allocated` counts on a GPU.

RSS (peak.py) is the honest process number on CPU, but it also holds what the allocator freed and
did not hand back, memory-mapped checkpoint pages and library scratch. To compare methods the way a
GPU's allocator would, this mode sees every ATen op's outputs (forward, autograd backward and the
optimizer all dispatch through it), adds each new storage's bytes and subtracts them when the
storage is freed. Tensors that exist before the phase (weights, optimizer state) are added by the
caller. Python overhead per op makes it slow: measure time without it.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorPeak(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = storage.data_ptr()
        if key and key not in self.live:
            self.live[key] = storage.nbytes()
            self.now += self.live[key]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, key)
