"""Dataset formats on disk (jsonl, csv, MSR-VTT, VATEX fixtures): pairs, skips, errors, the frame
cache, seek-based decoding and the multi-caption retrieval protocol."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from conftest import cli_env, vqtool_command
from dataset_fixtures import FORMATS, data_settings, materialize
from toolchain.data.cache import FrameCache
from toolchain.data.clips import load_clips, load_line
from toolchain.data.formats import read_split
from toolchain.data.synth import write_video
from toolchain.data.video import decode_video
from toolchain.errors import DataError, RecipeError
from toolchain.evaluate import retrieval_metrics
from toolchain.recipe import DataSection, validate_recipe


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return {fmt: materialize(fmt, tmp_path_factory.mktemp(fmt)) for fmt in FORMATS}


def data_section(fmt, root, *extra) -> DataSection:
    raw = {}
    for item in [*data_settings(fmt, root), *extra]:
        key, _, value = item.partition("=")
        raw[key.split(".", 1)[1]] = value
    return DataSection(**raw)


# (format, split) -> (usable pairs, distinct videos, skipped rows, a word every skip reason has)
EXPECTED = {
    ("jsonl", "train"): (4, 4, 2, None),
    ("jsonl", "eval"): (3, 3, 0, None),
    ("csv", "train"): (4, 4, 2, None),
    ("csv", "eval"): (3, 3, 0, None),
    ("msrvtt", "train"): (8, 4, 1, "no caption"),  # 9k-style split file: every caption of each clip
    ("msrvtt", "eval"): (3, 3, 1, "maps to no video file"),  # 1k-A style: one caption per clip
    ("vatex", "train"): (8, 4, 2, None),
    ("vatex", "eval"): (6, 3, 0, None),
    ("videoqa", "train"): (4, 2, 2, None),  # ids naming files; one id with no file, one row without answer
    ("videoqa", "eval"): (2, 2, 0, None),  # MSVD-QA: video_id 1 is vid1, named by youtube_mapping.txt; one "video" path
}


@pytest.mark.parametrize("fmt,which", list(EXPECTED), ids=lambda x: str(x))
def test_each_format_reads_pairs_and_counts_skips(datasets, fmt, which):
    pairs, videos, skipped, reason = EXPECTED[(fmt, which)]
    split = read_split(data_section(fmt, datasets[fmt]), which)
    assert len(split.pairs) == pairs and len({s.video for s in split.pairs}) == videos
    assert len(split.skipped) == skipped, split.skipped
    assert all(s.video.is_file() for s in split.pairs)
    if reason:
        assert all(reason in r for _, r in split.skipped)


def test_skip_reasons_name_row_and_cause(datasets):
    jl = read_split(data_section("jsonl", datasets["jsonl"]), "train").skipped
    assert any(w.endswith("train.jsonl:5") and "missing key 'caption'" in r for w, r in jl)
    assert any("missing.mp4 not found" in r for _, r in jl)
    vx = read_split(data_section("vatex", datasets["vatex"]), "train").skipped
    assert any("malformed" in r for _, r in vx) and any("Fg8_Ab0-Ww6_000001_000011" in r for _, r in vx)


def test_msrvtt_official_split_name_takes_every_caption(datasets):
    data = data_section("msrvtt", datasets["msrvtt"], "data.eval=test")
    split = read_split(data, "eval")
    assert [s.video.stem for s in split.pairs] == ["video5"] * 2 + ["video6"] + ["video7"] * 3
    with pytest.raises(DataError, match="neither a CLIP4Clip split .csv nor an MSR-VTT split name"):
        read_split(data_section("msrvtt", datasets["msrvtt"], "data.eval=testing"), "eval")


def test_split_with_no_usable_row_names_the_file(datasets, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,caption\nnope.mp4,a red circle moves left\n,\n")
    with pytest.raises(DataError, match=r"no usable \(video, caption\) row in .*bad.csv \(2 skipped"):
        read_split(DataSection(format="csv", train=str(bad)), "train")
    header = tmp_path / "header.csv"
    header.write_text("path,text\na.mp4,hello\n")
    with pytest.raises(DataError, match="needs the column\\(s\\) video, caption.*it has path, text"):
        read_split(DataSection(format="csv", train=str(header)), "train")


@pytest.mark.parametrize("data,message", [
    ({"format": "msrvtt", "video_root": "v"}, "data.annotations: format msrvtt needs"),
    ({"format": "vatex"}, "data.video_root: format vatex names clips by id"),
    ({"format": "csv", "annotations": "a.json"}, "data.annotations is only read by format msrvtt"),
    ({"format": "webvid"}, "data.format: 'webvid' is not allowed"),
])
def test_recipe_data_errors_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe({"data": data})


def test_legacy_jsonl_recipe_keys_still_validate():
    r = validate_recipe({"data": {"train": "a/train.jsonl", "eval": "a/eval.jsonl", "synth_videos": 3}})
    assert r.data.format == "jsonl" and r.data.train == "a/train.jsonl" and r.data.cache is True


def test_multi_caption_protocol():
    # 3 videos; captions 0,1 -> video 0, caption 2 -> video 1, captions 3,4 -> video 2.
    video_of = np.array([0, 0, 1, 2, 2])
    sim = np.array([
        [0.9, 0.1, 0.2],  # hit
        [0.1, 0.8, 0.2],  # its video ranks last (3rd)
        [0.1, 0.7, 0.3],  # hit
        [0.1, 0.2, 0.3],  # hit
        [0.5, 0.1, 0.2],  # its video ranks 2nd
    ])
    m = retrieval_metrics(sim, video_of=video_of)
    assert m["t2v"]["r1"] == pytest.approx(60.0) and m["t2v"]["mean_rank"] == pytest.approx(8 / 5)
    # v2t: video 0's best caption (0.9) beats every other caption: rank 1. Video 1's only caption
    # (0.7) is beaten by caption 1 (0.8, of video 0): rank 2. Video 2's best (0.3) is tied with
    # caption 2 (0.3): ties count against the model: rank 2.
    assert m["v2t"]["r1"] == pytest.approx(100 / 3) and m["v2t"]["median_rank"] == 2.0
    assert (m["captions"], m["videos"]) == (5, 3)


def fake_prepare(frames):
    k = 2
    idx = torch.tensor([[0, frames.shape[1] - 1]])
    pix = frames[:, idx[0]].permute(0, 1, 4, 2, 3).float()[..., :4, :4]
    return pix, idx, torch.zeros(1, k)


def test_clips_decode_each_video_once_and_cache_hits_later(datasets, tmp_path):
    split = read_split(data_section("vatex", datasets["vatex"]), "train")
    cache = FrameCache(tmp_path / "cache")
    first = load_clips(split, fake_prepare, 16, cache)
    assert len(first.videos) == 4 and len(first.captions) == 8 and first.video_of.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (first.load["cache_hits"], first.load["cache_misses"]) == (0, 4)
    assert torch.equal(first.pixels[torch.tensor([1, 2])], first.video_pixels[torch.tensor([0, 1])])
    second = load_clips(split, fake_prepare, 16, cache)
    assert (second.load["cache_hits"], second.load["cache_misses"]) == (4, 0)
    assert torch.equal(first.video_pixels, second.video_pixels)
    assert "4 clips (8 captions)" in load_line("train", second) and "4 hits, 0 misses" in load_line("train", second)
    other = load_clips(split, fake_prepare, 8, cache)  # another decode budget is another key
    assert other.load["cache_misses"] == 4


def test_cache_entries_are_plain_npz_and_follow_the_file(tmp_path):
    video = tmp_path / "v.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (12, 16, 24, 3), dtype=np.uint8)
    write_video(video, frames)
    cache = FrameCache(tmp_path / "cache")
    a = cache.decode(video, 6)
    entry = cache.entry(video, 6)
    with np.load(entry, allow_pickle=False) as z:
        assert z["frames"].dtype == np.uint8 and np.array_equal(z["frames"], a)
    write_video(video, frames[:8])  # a changed file is a new key (size / mtime)
    assert cache.entry(video, 6) != entry and cache.decode(video, 6).shape[0] == 6
    assert (cache.hits, cache.misses) == (0, 2)
    entry.write_bytes(b"not an npz")  # a damaged entry is decoded again, never trusted
    assert FrameCache(tmp_path / "cache").decode(video, 6).shape == (6, 16, 24, 3)


def test_seeking_decodes_the_same_frames_without_reading_the_whole_file(tmp_path):
    n = 300
    frames = np.zeros((n, 32, 48, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(n) % 256)[:, None, None]
    frames[:, :, :, 1] = (np.arange(n) // 256 * 100)[:, None, None]
    video = tmp_path / "long.mp4"
    write_video(video, frames, fps=25, gop=25)
    seek, whole = {}, {}
    got = decode_video(video, 8, seek)
    ref = decode_video(video, None, whole)
    from toolchain.data.video import frame_indices

    assert np.array_equal(got, ref[frame_indices(n, 8)])
    assert seek["seeked"] and seek["decoded"] < n / 2, seek
    assert whole["decoded"] == n


def test_a_missing_eval_file_names_data_eval(tmp_path):
    from toolchain.data.formats import read_split
    from toolchain.errors import DataError
    from toolchain.recipe import DataSection

    (tmp_path / "train.jsonl").write_text("")
    data = DataSection(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"^data\.eval: annotation file .*missing\.jsonl not found; fix data\.eval"):
        read_split(data, "eval")


def test_cache_command_counts_and_clears_only_its_own_files(tmp_path, run_cli):
    video = tmp_path / "v.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (8, 16, 24, 3), dtype=np.uint8))
    folder = tmp_path / "cache"
    cache = FrameCache(folder)
    cache.decode(video, 4), cache.decode(video, 8)  # two budgets: two entries
    (folder / "notes.txt").write_text("a user's file in the wrong place")
    (folder / "ab").mkdir(exist_ok=True)
    (folder / "ab" / "keep.npz").write_bytes(b"not a cache entry name")
    size = sum(f.stat().st_size for f in folder.rglob("*.npz") if f.name != "keep.npz")

    info = run_cli("data", "cache", folder)
    assert info.returncode == 0 and "2 entries" in info.stdout, info.stdout + info.stderr
    refused = subprocess.run([*vqtool_command(), "data", "cache", str(folder), "--clear"], input="n\n",
                             capture_output=True, text=True, env=cli_env())
    assert refused.returncode == 1 and len(list(folder.rglob("*.npz"))) == 3
    cleared = run_cli("data", "cache", folder, "--clear", "--yes")
    assert cleared.returncode == 0 and f"removed 2 entries, {size / 1e9:.2f} GB" in cleared.stdout
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["keep.npz", "notes.txt"]
    assert cache.decode(video, 4).shape[0] == 4 and cache.misses == 3  # decoded again, written again
