"""CPU memory a training process gives up: the checkpoint map of a quantized base, and freed heap."""

from __future__ import annotations

from pathlib import Path

import pytest

MAPS = Path("/proc/self/maps")


def mapped_ranges(file: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `file` (Linux /proc/self/maps)."""
    ranges = []
    for line in MAPS.read_text().splitlines():
        if line.rstrip().endswith(str(file)):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not MAPS.is_file(), reason="needs Linux /proc/self/maps")
def test_quantized_base_holds_no_tensor_in_the_checkpoint_map():
    import torch
    from safetensors import safe_open

    from toolchain.adapters.qlora import bnb_config
    from toolchain.models.build import base_info, is_quantized, load_clip
    from toolchain.recipe import AdaptersSection

    info = base_info("tiny-video-clip")
    file = Path(info.path, "model.safetensors").resolve()
    fp32 = load_clip(info.path)  # full precision keeps its weights mapped: that is what the check can see
    nf4 = load_clip(info.path, bnb_config(AdaptersSection(quantization="nf4")))
    ranges = mapped_ranges(file)
    assert ranges and any(lo <= fp32.logit_scale.data_ptr() < hi for lo, hi in ranges)
    plain = [(n, t) for n, t in [*nf4.named_parameters(), *nf4.named_buffers()] if not is_quantized(t)]
    assert plain and any(is_quantized(p) for p in nf4.parameters())
    in_map = [n for n, t in plain if any(lo <= t.data_ptr() < hi for lo, hi in ranges)]
    assert not in_map, f"still views of {file.name}: {in_map[:5]}"
    with safe_open(str(file), "pt") as f:  # same values, only owned
        name = "text_model.embeddings.token_embedding.weight"
        assert torch.equal(nf4.get_parameter(name), f.get_tensor(name))


FRAGMENTED_HEAP = """
import sys
from pathlib import Path
from toolchain.heap import release_free_heap

def rss_kb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1])

blocks, keep = [], []
for _ in range(800):  # 64 KiB blocks stay under glibc's mmap threshold, so they live in the heap
    blocks.append(bytearray(64 * 1024))
    keep.append(bytearray(64))  # a survivor after each block: the freed space is never at the heap's top
before = rss_kb()
del blocks
freed = rss_kb()
print(release_free_heap(), before - freed, freed - rss_kb())
"""


@pytest.mark.skipif(not MAPS.is_file(), reason="needs Linux /proc")
def test_release_free_heap_returns_freed_heap_to_the_os():
    import subprocess
    import sys

    from toolchain.heap import glibc_trim

    if glibc_trim() is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    released, by_free, by_trim = out.stdout.split()
    assert released == "True"
    assert int(by_free) < 10 * 1024  # glibc kept the 50 MB freed in the middle of its heap ...
    assert int(by_trim) > 40 * 1024  # ... until malloc_trim handed it back


class NoTrim:
    """A C library without malloc_trim (macOS's, musl's)."""


@pytest.mark.parametrize("cdll", [NoTrim, None])
def test_release_free_heap_is_a_no_op_without_malloc_trim(monkeypatch, cdll):
    import toolchain.heap as heap

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: NoTrim() if cdll else missing(name))
    assert heap.glibc_trim() is None
    assert heap.release_free_heap() is False
