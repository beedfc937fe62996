"""Annotation files: one JSON object per line pairing a video path with its caption."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import DataError


@dataclass(frozen=True)
class Sample:
    video: Path
    caption: str


def _parse_line(line: str, folder: Path) -> Sample:
    """One JSONL line as a Sample; raises ValueError describing what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("video", "caption"):
        if key not in row:
            raise ValueError(f"missing key '{key}'")
        if not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    # Relative paths are relative to the annotation file, so a dataset folder can move.
    return Sample(video=folder / row["video"], caption=row["caption"])


def load_jsonl(path: Path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"annotation file {path} not found; run `vqtool data synth DIR` or fix data.train in the recipe"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"annotation file {path} is not UTF-8 text ({err.reason})") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            samples.append(_parse_line(line, path.parent))
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
    if not samples:
        raise DataError(f"annotation file {path} has no samples; add lines like "
                        '{"video": "videos/a.mp4", "caption": "..."}')
    return samples
