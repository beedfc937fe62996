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


def _check_row(row) -> tuple[str, str]:
    """A parsed JSONL row -> (video, caption); raises ValueError describing what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("video", "caption"):
        if key not in row:
            raise ValueError(f"missing key '{key}'")
        if not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    return row["video"], row["caption"]


def _parse_line(line: str, folder: Path) -> Sample:
    """One JSONL line as a Sample; raises ValueError describing what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    video, caption = _check_row(row)
    # Relative paths are relative to the annotation file, so a dataset folder can move.
    return Sample(video=folder / video, caption=caption)


def parse_rows(lines: list[str]):
    """(line number, parsed row or None, error or None) for every non-empty line, in order."""
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line), None))
        except json.JSONDecodeError as err:
            out.append((number, None, f"not valid JSON ({err.msg})"))
    return out


def samples_of(folder: Path, paths: dict, video: str, caption: str) -> Sample:
    """A Sample whose Path is shared by every row of the same video (built and hashed once)."""
    path = paths.get(video)
    if path is None:
        path = paths[video] = folder / video  # relative to the annotation file, so a dataset folder can move
    return Sample(path, caption)


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
    samples, paths = [], {}
    for number, row, error in parse_rows(lines):
        try:
            if error is not None:
                raise ValueError(error)
            samples.append(samples_of(path.parent, paths, *_check_row(row)))
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
    if not samples:
        raise DataError(f"annotation file {path} has no samples; add lines like "
                        '{"video": "videos/a.mp4", "caption": "..."}')
    return samples
