"""Fixture datasets in each real on-disk format (tests/fixtures/datasets/FORMAT), with their videos
rendered by the synthetic-shapes renderer from the caption each file is listed with in videos.json."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np

from toolchain.data.synth import render_clip, write_video

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"
FORMATS = ("jsonl", "csv", "msrvtt", "vatex", "videoqa")
SPLIT_FILES = {
    "jsonl": ("train.jsonl", "eval.jsonl"),
    "csv": ("train.csv", "eval.csv"),
    "msrvtt": ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"),
    "vatex": ("vatex_training_v1.0.json", "vatex_validation_v1.0.json"),
    "videoqa": ("train_qa.json", "test_qa.json"),  # MSRVTT-QA ids in train, MSVD-QA ids (and a path) in test
}


def materialize(fmt: str, dest: Path) -> Path:
    """Copy the fixture files of `fmt` to dest and render its videos; returns dest."""
    shutil.copytree(FIXTURES / fmt, dest, dirs_exist_ok=True)
    videos = json.loads((dest / "videos.json").read_text())
    root = dest / "videos" if fmt in ("msrvtt", "vatex", "videoqa") else dest
    for name, caption in videos.items():
        _, color, shape, _, direction = caption.split()
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / name, render_clip(rng, color, shape, direction))
    return dest


def data_settings(fmt: str, dest: Path) -> list[str]:
    """Recipe overrides (`--set` items) that point a recipe at the materialized fixture."""
    train, evalf = SPLIT_FILES[fmt]
    out = [f"data.format={fmt}", f"data.train={dest / train}", f"data.eval={dest / evalf}"]
    if fmt == "msrvtt":
        out.append(f"data.annotations={dest / 'train_val_videodatainfo.json'}")
    if fmt == "videoqa":
        out.append(f"data.annotations={dest / 'youtube_mapping.txt'}")
    if fmt in ("msrvtt", "vatex", "videoqa"):
        out.append(f"data.video_root={dest / 'videos'}")
    return out
