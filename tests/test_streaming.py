"""Splits too large for RAM stream their pixels per batch from the frame cache, with the same result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from toolchain.data.cache import FrameCache
from toolchain.data.clips import StreamedPixels, load_clips, stream_line
from toolchain.errors import DataError
from toolchain.progress import Reporter
from toolchain.recipe import DataSection
from toolchain.models.assemble import build_trainable, model_info
from toolchain.train import finetune


@pytest.fixture(scope="module")
def model(tiny_recipe):
    return build_trainable(tiny_recipe, model_info(tiny_recipe), "cpu")


@pytest.fixture(scope="module")
def prepare(model):
    return model.preparer()


def test_preparer_holds_no_model_and_matches_the_method(model):
    prep = model.preparer()
    assert all(not isinstance(v, torch.nn.Module) for v in prep.keywords.values())
    frames = torch.randint(0, 256, (1, 9, 40, 56, 3), dtype=torch.uint8)
    for a, b in zip(prep(frames), model.prepare_frames(frames)):
        assert torch.equal(a, b)


def test_a_split_over_the_memory_budget_streams_the_same_pixels(shapes_data, prepare, tmp_path):
    cache = FrameCache(tmp_path / "cache")
    kept = load_clips(shapes_data / "eval.jsonl", prepare, 64, cache)
    per_video = kept.video_pixels[0].nbytes
    streamed = load_clips(shapes_data / "eval.jsonl", prepare, 64, cache, memory_bytes=per_video * 47)
    assert not kept.streamed and streamed.streamed and isinstance(streamed.video_pixels, StreamedPixels)
    assert streamed.video_pixels.shape == kept.video_pixels.shape == (48, *kept.video_pixels.shape[1:])
    assert torch.equal(streamed.video_indices, kept.video_indices)
    assert torch.equal(streamed.video_motion, kept.video_motion)
    hits = cache.hits
    for idx in (slice(3, 9), torch.tensor([5, 0, 47]), [2, 2], 7):
        assert torch.equal(streamed.video_pixels[idx], kept.video_pixels[idx])
    pairs = torch.tensor([1, 40, 3])
    assert torch.equal(streamed.pixels[pairs], kept.pixels[pairs])
    assert torch.equal(streamed.pixels[9], kept.pixels[9])  # one pair: PairView passes a 0-d tensor
    assert cache.hits - hits == 6 + 3 + 2 + 1 + 3 + 1  # every streamed video comes from the cache, none decoded


def test_a_video_gone_after_loading_is_a_clear_error(shapes_data, prepare, tmp_path):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_data, root)
    clips = load_clips(root / "eval.jsonl", prepare, 64, FrameCache(None), memory_bytes=0)
    clips.videos[1].unlink()
    with pytest.raises(DataError, match=f"{clips.videos[1].name} was readable when the split was loaded"):
        clips.video_pixels[0:2]


def test_stream_line_names_the_key_and_warns_without_cache(shapes_data, prepare):
    clips = load_clips(shapes_data / "eval.jsonl", prepare, 64, memory_bytes=0)
    line = stream_line("train", clips, DataSection(in_memory_gb=0))
    assert "data.in_memory_gb (0)" in line and "48 x " in line and "data.cache" not in line
    assert "set data.cache: true" in stream_line("train", clips, DataSection(in_memory_gb=0, cache=False))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "captioning"])
def test_streamed_finetune_trains_the_same_adapter(request, task, tmp_path):
    fixtures = {"retrieval": ("tiny_recipe", "tiny_run"), "captioning": ("tiny_caption_recipe", "tiny_caption_run")}
    tiny_recipe, tiny_run = (request.getfixturevalue(name) for name in fixtures[task])
    recipe = tiny_recipe.model_copy(update={"data": tiny_recipe.data.model_copy(update={"in_memory_gb": 0.0})})
    run = tmp_path / "streamed"
    finetune(recipe, run, False, Reporter(quiet=True))
    ours, theirs = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, tiny_run))
    assert ours.keys() == theirs.keys()
    moved = 0
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
        moved += int(ours[name].abs().sum() > 0)
    assert moved > 0
    tuned = [json.loads((r / "eval.json").read_text())["finetuned"] for r in (run, tiny_run)]
    assert tuned[0] == tuned[1]


RSS_PROBE = """
import json, sys
from pathlib import Path
from toolchain.bench.peak import status_kb
from toolchain.data.cache import FrameCache
from toolchain.data.clips import load_clips
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
from toolchain.models.video_clip import prepare_frames
from functools import partial

prep = partial(prepare_frames, k=12, selector="uniform", image_size=224, mean=CLIP_MEAN, std=CLIP_STD,
               resize_shortest=224, rescale=1 / 255, resample="bicubic")
ann = Path(sys.argv[1])
cache = FrameCache(ann.parent / "cache")
for video in sorted(ann.parent.glob("v?.mp4")):
    cache.decode(video, 32)  # fill the frame cache (the measured load reads it)
load_clips(ann.with_name("one.jsonl"), prep, 32, cache, memory_bytes=0)  # first-use allocations
before = status_kb("VmRSS")
clips = load_clips(ann, prep, 32, cache, memory_bytes=0)
print(json.dumps({"grew_kb": status_kb("VmRSS") - before, "videos": len(clips.videos)}))
"""


def test_streaming_load_memory_does_not_grow_with_the_split(tmp_path):
    """Loading a streamed split keeps only indices and motion: RSS must not grow per video (it did by
    ~4 MB per 224 px video when per-video tensors were kept alive between the big buffers;
    now a constant 1.5-54 MB measured over 14 runs, whatever the count)."""
    import numpy as np
    import subprocess
    import sys

    from toolchain.data.synth import write_video

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        write_video(tmp_path / f"v{i}.mp4", rng.integers(0, 255, (32, 240, 320, 3), dtype=np.uint8))
        for copy in range(20):  # other names of the same file: distinct videos to the loader
            (tmp_path / f"v{i}_{copy}.mp4").symlink_to(f"v{i}.mp4")
            rows.append(json.dumps({"video": f"v{i}_{copy}.mp4", "caption": f"clip {i} copy {copy}"}))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "one.jsonl").write_text(json.dumps({"video": "v0.mp4", "caption": "one"}) + "\n")
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path / "train.jsonl")], check=True,
                         capture_output=True, text=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["videos"] == 120
    assert probe["grew_kb"] < 120 * 1024, probe  # < 1 MB per video; each video's pixels are 7.2 MB


def test_batches_are_the_same_streamed_or_not_and_a_finite_stream_ends(shapes_data, prepare):
    from toolchain.data.batches import batches

    kept = load_clips(shapes_data / "eval.jsonl", prepare, 64)
    streamed = load_clips(shapes_data / "eval.jsonl", prepare, 64, memory_bytes=0)
    order = [torch.tensor([3, 1]), torch.tensor([0]), torch.tensor([47, 2, 5])]
    a, b = list(batches(kept, iter(order), "cpu")), list(batches(streamed, iter(order), "cpu"))
    assert len(a) == len(b) == 3
    for (ia, pa, ma), (ib, pb, mb), want in zip(a, b, order):
        assert torch.equal(ia, want) and torch.equal(ib, want)
        assert torch.equal(pa, pb) and torch.equal(ma, mb) and pa.shape[0] == len(want)
    assert list(batches(streamed, iter([]), "cpu")) == []
