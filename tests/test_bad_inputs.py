"""Bad input in a dataset or a recipe: unreadable videos are skipped and listed, odd sizes work, mistakes exit 2.

(test_video.py covers each unreadable file at the decoder; here they go through the dataset loader and the CLI.)
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
import yaml

from conftest import SHIPPED_RECIPE
from toolchain.data.clips import load_clips
from toolchain.data.synth import write_video
from toolchain.errors import DataError, RecipeError
from toolchain.models.build import base_info
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import load_recipe

K = 4


def moving_square(n: int, h: int, w: int) -> np.ndarray:
    frames = np.full((n, h, w, 3), 30, dtype=np.uint8)
    side = max(2, min(h, w) // 4)
    for i in range(n):
        x = (i * (w - side)) // max(1, n - 1)
        frames[i, (h - side) // 2 : (h + side) // 2, x : x + side] = (220, 40, 40)
    return frames


def write_bad_files(folder, good_video) -> dict[str, str]:
    """The unreadable kinds a real dataset contains: name -> what goes wrong."""
    (folder / "empty.mp4").write_bytes(b"")
    data = good_video.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    corrupt = bytearray(data)
    corrupt[: len(corrupt) // 2] = np.random.default_rng(0).integers(0, 256, len(corrupt) // 2, dtype=np.uint8).tobytes()
    (folder / "corrupt.mp4").write_bytes(bytes(corrupt))
    (folder / "notes.mp4").write_text("meeting notes, not a video\n" * 40)
    with av.open(str(folder / "tone.wav"), "w") as container:  # a real media file with no video stream
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {"empty.mp4": "empty", "truncated.mp4": "truncated", "corrupt.mp4": "corrupt",
            "notes.mp4": "text", "tone.wav": "no video stream"}


def write_odd_sizes(folder) -> dict[str, tuple[int, int, int]]:
    """Readable but unusual clips: (frames, height, width)."""
    sizes = {"one_frame.mp4": (1, 64, 80), "hd.mp4": (3, 720, 1280), "tiny.mp4": (6, 16, 16)}
    for name, (n, h, w) in sizes.items():
        write_video(folder / name, moving_square(n, h, w))
    return sizes


@pytest.fixture(scope="module")
def messy_dataset(shapes_data, tmp_path_factory):
    """train.jsonl: 4 good shapes clips, every kind of unreadable file, and the odd sizes."""
    folder = tmp_path_factory.mktemp("messy")
    good = [json.loads(x) for x in (shapes_data / "train.jsonl").read_text().splitlines()[:4]]
    rows = [{"video": str(shapes_data / r["video"]), "caption": r["caption"]} for r in good]
    bad = write_bad_files(folder, shapes_data / good[0]["video"])
    odd = write_odd_sizes(folder)
    rows += [{"video": name, "caption": "a red square moves right"} for name in [*bad, *odd]]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, bad, odd


@pytest.fixture(scope="module", params=["uniform", "motion", "motion-uniform"])
def video_model(request):
    """The model's own frame path (selector + preprocessing); the tower itself is not needed here."""
    info = base_info("tiny-video-clip")
    return VideoCLIP(torch.nn.Module(), K, request.param, info.image_size, info.mean, info.std)


@pytest.fixture(scope="module")
def loaded(messy_dataset, video_model):
    return load_clips(messy_dataset[0] / "train.jsonl", video_model.prepare_frames, 64)


def test_unreadable_videos_are_skipped_counted_and_named(messy_dataset, loaded):
    folder, bad, odd = messy_dataset
    clips = loaded
    skipped = dict(clips.skipped)
    assert sorted(skipped) == sorted(str(folder / name) for name in bad)
    assert skipped[str(folder / "tone.wav")] == "no video stream"
    assert all(reason and "Errno" not in reason for reason in skipped.values())
    assert len(clips.captions) == 4 + len(odd) == clips.pixels.shape[0]


def test_one_frame_hd_and_16px_clips_give_k_frames_at_model_size(messy_dataset, video_model, loaded):
    folder, _, odd = messy_dataset
    size, clips = video_model.image_size, loaded
    for name, (n, _, _) in odd.items():
        i = [str(v) for v in clips.videos].index(str(folder / name))
        assert clips.pixels[i].shape == (K, 3, size, size)
        assert torch.isfinite(clips.pixels[i]).all()
        idx = clips.indices[i]
        assert idx.shape == (K,) and 0 <= int(idx.min()) and int(idx.max()) < n
        assert torch.all(idx[1:] >= idx[:-1])
    one = [str(v) for v in clips.videos].index(str(folder / "one_frame.mp4"))
    assert clips.indices[one].tolist() == [0] * K  # the single frame, repeated
    assert torch.equal(clips.motion[one], torch.zeros(K))  # no motion in a single frame


def test_a_dataset_with_no_readable_video_is_one_data_error(tmp_path, video_model):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "train.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n')
    with pytest.raises(DataError, match="no readable video") as exc:
        load_clips(tmp_path / "train.jsonl", video_model.prepare_frames, 64)
    assert str(tmp_path / "train.jsonl") in str(exc.value)


@pytest.mark.parametrize("key, value, needle", [
    ("frames.k", "eight", "frames.k"), ("train.lr", "fast", "train.lr"), ("adapters.rank", "[4]", "adapters.rank"),
    ("train.max_steps", "2.5", "train.max_steps"), ("adapters.double_quant", "maybe", "adapters.double_quant"),
])
def test_wrong_type_in_a_recipe_names_the_key(tmp_path, key, value, needle):
    section, name = key.split(".")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({section: {name: yaml.safe_load(value)}}))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert needle in str(exc.value) and "1 problem(s)" in str(exc.value)


def test_cli_wrong_type_and_missing_annotations_exit_2_with_one_message(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    proc = run_cli("finetune", bad, "--output-dir", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.lr" in proc.stderr and "'fast'" in proc.stderr
    missing = tmp_path / "nowhere" / "train.jsonl"
    proc = run_cli("finetune", SHIPPED_RECIPE, "--output-dir", tmp_path / "run", "--set", f"data.train={missing}",
                   "--set", "data.synthesize_if_missing=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "data.train" in errors[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
