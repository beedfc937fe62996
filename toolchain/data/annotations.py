"""Annotation files: one JSON object per line pairing a video path with its caption, or with a question
and its answer ({"video", "question", "answer"}, optionally "type")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import DataError


@dataclass(frozen=True)
class Sample:
    """One row: a video and the text to match or produce, a caption or, for a question, its answer."""

    video: Path
    caption: str
    question: str | None = None
    qtype: str | None = None  # question type as the row names it (else the question's first word)


def _strings(row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in row:
            raise ValueError(f"missing key '{key}'")
        if not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")


def _parse_line(line: str, folder: Path) -> Sample:
    """One JSONL line as a Sample; raises ValueError describing what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    # Relative paths are relative to the annotation file, so a dataset folder can move.
    if "question" in row or "answer" in row:
        _strings(row, ("video", "question", "answer"))
        qtype = row.get("type")
        if qtype is not None and not isinstance(qtype, str):
            raise ValueError(f"'type' must be a string, got {type(qtype).__name__}")
        if not row["question"].strip() or not row["answer"].strip():
            raise ValueError("empty question or answer")
        return Sample(folder / row["video"], row["answer"], row["question"], qtype)
    _strings(row, ("video", "caption"))
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
