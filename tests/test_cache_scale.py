"""The frame cache at dataset scale: compact entries that select what the graph selects, a capped
size with least-recently-used eviction, damaged or old entries decoded again, hit-rate counts, and
`vqtool data prepare` (a process pool) resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import SHIPPED_RECIPE, TINY_OVERRIDES, cli_env, data_overrides, vqtool_command
from toolchain.data.cache import FORMAT, FrameCache, cache_entries, folder_bytes, read_entry, read_stats
from toolchain.data.clips import load_clips
from toolchain.data.synth import write_video
from toolchain.frames import select_frames
from toolchain.models.build import BaseInfo, base_info
from toolchain.models.preprocess import CLIP_MEAN, CLIP_STD
from toolchain.models.video_clip import frame_preparer, prepare_frames

TINY = base_info("tiny-video-clip", "clip")
PROCESSOR = BaseInfo(path="", tokenizer=TINY.tokenizer, image_size=32, mean=CLIP_MEAN, std=CLIP_STD, max_text_len=16,
                     resize_shortest=36, resample="bicubic")


def moving_clip(rng, n: int, h: int, w: int) -> np.ndarray:
    frames = rng.integers(0, 40, (n, h, w, 3), dtype=np.uint8)
    for t in range(n):  # a bright block whose speed varies, so motion selectors have something to choose
        x = int((t * t) % max(1, w - 8))
        frames[t, h // 4: h // 4 + 8, x: x + 8] = 250
    return frames


@pytest.mark.parametrize("info", [TINY, PROCESSOR], ids=["square-crop", "processor-resize"])
@pytest.mark.parametrize("selector", ["uniform", "motion", "motion-uniform"])
def test_compact_entry_keeps_the_selection_and_rounds_only_the_pixels(info, selector):
    """The cache stores K frames at model size, but indices and motion come from the full decoded
    frames: exactly what the exported graph computes; pixels differ by the uint8 rounding only."""
    rng = np.random.default_rng(0)
    prep = frame_preparer(6, selector, info)
    for n, h, w in ((40, 48, 64), (9, 70, 52), (3, 33, 33)):  # also fewer frames than K
        frames = moving_clip(rng, n, h, w)
        entry = prep.compact(frames)
        assert entry["frames"].dtype == np.uint8 and entry["frames"].shape == (6, 32, 32, 3)
        assert entry["energy"].shape == (n,)
        assert np.array_equal(entry["indices"], select_frames(torch.from_numpy(frames), 6, selector).numpy())
        pix, idx, motion = prep.from_compact(entry)
        ref_pix, ref_idx, ref_motion = prepare_frames(torch.from_numpy(frames)[None], **prep.keywords)
        assert torch.equal(idx, ref_idx) and torch.equal(motion, ref_motion)
        bound = 0.5 / 255 / min(info.std) + 1e-5  # half a level of the resized uint8 image, normalised
        assert pix.shape == ref_pix.shape and (pix - ref_pix).abs().max() <= bound
    tiny_k4 = frame_preparer(4, "uniform", TINY)
    assert len({prep.cache_tag, frame_preparer(6, selector, PROCESSOR if info is TINY else TINY).cache_tag,
                tiny_k4.cache_tag}) == 3  # another geometry or K is another key


def test_the_onnx_graph_selects_the_frames_the_cache_stores(tiny_export, tiny_recipe, shapes_data):
    import onnxruntime as ort

    from toolchain.data.video import decode_video

    prep = frame_preparer(tiny_recipe.frames.k, tiny_recipe.frames.selector, TINY)
    sess = ort.InferenceSession(str(tiny_export / "video_encoder.onnx"), providers=["CPUExecutionProvider"])
    for video in sorted((shapes_data / "videos").glob("eval_000*.mp4"))[:4]:
        frames = decode_video(video, 64)
        assert np.array_equal(sess.run(None, {"frames": frames[None]})[1][0], prep.compact(frames)["indices"])


@pytest.fixture
def six_videos(shapes_data):
    return sorted((shapes_data / "videos").glob("eval_00*.mp4"))[:6]


def test_a_tiny_cap_evicts_the_least_recently_used_entries(six_videos, tmp_path):
    prep = frame_preparer(4, "uniform", TINY)
    folder = tmp_path / "cache"
    probe = FrameCache(folder)
    probe.clip(six_videos[0], 64, prep)
    size = folder_bytes(folder)
    cache = FrameCache(folder, max_bytes=4.5 * size)  # room for four entries
    for video in six_videos[1:4]:
        cache.clip(video, 64, prep)
        time.sleep(0.01)
    cache.clip(six_videos[0], 64, prep)  # a hit: now the most recently used
    assert (cache.hits, cache.evicted) == (1, 0)
    for video in six_videos[4:]:
        cache.clip(video, 64, prep)
        assert folder_bytes(folder) <= cache.max_bytes
    assert cache.evicted == 2
    alive = {v.name for v in six_videos if cache.entry(v, 64, prep.cache_tag).is_file()}
    assert alive == {six_videos[i].name for i in (0, 3, 4, 5)}  # 1 and 2 were the least recently used
    again = FrameCache(folder)
    again.clip(six_videos[1], 64, prep)
    assert again.misses == 1  # an evicted clip is decoded again


def test_damaged_or_older_entries_are_decoded_again_never_trusted(six_videos, tmp_path):
    prep = frame_preparer(4, "uniform", TINY)
    video = six_videos[0]
    cache = FrameCache(tmp_path / "cache")
    good = cache.clip(video, 64, prep)
    entry = cache.entry(video, 64, prep.cache_tag)
    raw = entry.read_bytes()
    member = raw.index(good["frames"].tobytes()[:64])
    damaged = {
        "truncated": raw[: len(raw) // 2],
        "bit flip in the pixels": raw[:member + 10] + bytes([raw[member + 10] ^ 1]) + raw[member + 11:],
        "garbage": b"not an npz",
    }
    for why, data in damaged.items():
        entry.write_bytes(data)
        fresh = FrameCache(tmp_path / "cache")
        got = fresh.clip(video, 64, prep)
        assert fresh.misses == 1, why
        assert all(np.array_equal(got[k], good[k]) for k in good), why
        assert read_entry(entry, members=None, check=lambda a: True) is not None  # rewritten whole
    # An entry without the format member (what vqtool wrote before format 2), or another format number.
    for arrays in ({k: v for k, v in good.items()}, {"format": np.int64(FORMAT - 1), **good}):
        with open(entry, "wb") as f:
            np.savez(f, **arrays)
        fresh = FrameCache(tmp_path / "cache")
        fresh.clip(video, 64, prep)
        assert fresh.misses == 1
    # Out-of-range indices in an otherwise valid entry are not trusted either.
    with open(entry, "wb") as f:
        np.savez(f, format=np.int64(FORMAT), **{**good, "indices": good["indices"] + 1000})
    fresh = FrameCache(tmp_path / "cache")
    fresh.clip(video, 64, prep)
    assert fresh.misses == 1


def test_data_cache_reports_hit_rate_size_and_cap(six_videos, tmp_path, run_cli):
    prep = frame_preparer(4, "uniform", TINY)
    folder = tmp_path / "cache"
    cache = FrameCache(folder, max_bytes=2e9)
    for video in six_videos[:3] * 2:
        cache.clip(video, 64, prep)
    cache.flush()
    assert read_stats(folder) | {"since": None} == {"hits": 3, "misses": 3, "evicted": 0, "since": None, "cap_gb": 2.0}
    out = run_cli("data", "cache", folder)
    assert out.returncode == 0, out.stderr
    assert "3 entries" in out.stdout and "of its 2 GB cap" in out.stdout
    assert "hit rate 50.0% (3 hits, 3 misses" in out.stdout
    cleared = run_cli("data", "cache", folder, "--clear", "--yes")
    assert cleared.returncode == 0 and not cache_entries(folder) and not (folder / "stats.json").exists()


def test_prepare_uses_the_preparer_training_uses(tiny_recipe):
    from toolchain.data.prepare_cache import recipe_preparer
    from toolchain.models.assemble import build_trainable, model_info

    model = build_trainable(tiny_recipe, model_info(tiny_recipe), "cpu")
    ours, theirs = recipe_preparer(tiny_recipe), model.preparer()
    assert ours.cache_tag == theirs.cache_tag and ours.keywords == theirs.keywords


def start_prepare(recipe_sets: list[str], workers: int):
    sets = [a for s in recipe_sets for a in ("--set", s)]
    return subprocess.Popen([*vqtool_command(), "data", "prepare", str(SHIPPED_RECIPE), "--workers", str(workers), *sets],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_a_killed_prepare_resumes_without_redoing_finished_entries(shapes_data, tmp_path):
    """Kill `vqtool data prepare` (its whole process group) mid-way; the rerun decodes only the rest,
    leaves the finished entries untouched, and training then reads every clip from the cache."""
    root = tmp_path / "set"
    (root / "videos").mkdir(parents=True)
    rows = []
    for i, row in enumerate(json.loads(line) for line in (shapes_data / "eval.jsonl").read_text().splitlines()):
        for copy in range(4):  # hard links: distinct paths (distinct keys) at no disk cost
            os.link(shapes_data / row["video"], root / "videos" / f"c{copy}_{i}.mp4")
            rows.append(json.dumps({"video": f"videos/c{copy}_{i}.mp4", "caption": row["caption"]}))
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    (root / "eval.jsonl").write_text("\n".join(rows[:4]) + "\n")
    folder = tmp_path / "cache"
    sets = [*TINY_OVERRIDES, *data_overrides(root), f"data.cache_dir={folder}"]
    proc = start_prepare(sets, 1)
    deadline = time.time() + 240
    while len(cache_entries(folder)) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    done = {f: f.stat().st_ino for f in cache_entries(folder) if not f.name.startswith(".tmp-")}
    assert 10 <= len(done) < len(rows)
    rerun = start_prepare(sets, 2)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert f"train: {len(rows)} clips, {len(rows) - len(done)} decoded, {len(done)} already cached" in out, out
    assert all(f.stat().st_ino == ino for f, ino in done.items())  # finished entries were not rewritten
    from toolchain.data.prepare_cache import recipe_preparer
    from toolchain.recipe import load_recipe

    recipe = load_recipe(SHIPPED_RECIPE, sets)
    clips = load_clips(root / "train.jsonl", recipe_preparer(recipe), 64, FrameCache(folder), memory_bytes=0)
    assert clips.streamed and (clips.load["cache_hits"], clips.load["cache_misses"]) == (len(rows), 0)


def test_a_large_annotation_file_reports_malformed_rows_by_line_and_shares_paths(tmp_path):
    from toolchain.data.formats import read_jsonl
    from toolchain.recipe import DataSection

    (tmp_path / "videos").mkdir()
    for i in range(50):
        (tmp_path / "videos" / f"v{i}.mp4").touch()
    lines = [json.dumps({"video": f"videos/v{i % 50}.mp4", "caption": f"caption {i}"}) for i in range(5000)]
    lines[2], lines[1999], lines[4998] = "{not json", json.dumps({"video": "videos/v1.mp4"}), json.dumps({"video": 3, "caption": "x"})
    lines.insert(10, "")  # a blank line is skipped but still counted
    (tmp_path / "ann.jsonl").write_text("\n".join(lines) + "\n")
    split = read_jsonl(DataSection(format="jsonl"), str(tmp_path / "ann.jsonl"))
    where = [w.rsplit(":", 1)[1] for w, _ in split.skipped]
    assert where == ["3", "2001", "5000"], split.skipped
    assert "not valid JSON" in split.skipped[0][1] and "missing key 'caption'" in split.skipped[1][1]
    assert len(split.pairs) == 4997 and len({id(s.video) for s in split.pairs}) == 50  # one Path per video
