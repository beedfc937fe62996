"""What keeps CPU training memory honest: a quantized base lets go of its checkpoint's memory map."""

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
