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


def _check_row(row) -> tuple:
    """A parsed JSONL row -> (video, caption) or, for a QA row, (video, answer, question, type); raises
    ValueError describing what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "question" in row or "answer" in row:
        _strings(row, ("video", "question", "answer"))
        qtype = row.get("type")
        if qtype is not None and not isinstance(qtype, str):
            raise ValueError(f"'type' must be a string, got {type(qtype).__name__}")
        if not row["question"].strip() or not row["answer"].strip():
            raise ValueError("empty question or answer")
        return row["video"], row["answer"], row["question"], qtype
    _strings(row, ("video", "caption"))
    return row["video"], row["caption"]


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


def samples_of(folder: Path, paths: dict, video: str, caption: str, question: str | None = None,
               qtype: str | None = None) -> Sample:
    """A Sample whose Path is shared by every row of the same video (built and hashed once); for a QA
    row `caption` is the answer."""
    path = paths.get(video)
    if path is None:
        path = paths[video] = folder / video  # relative to the annotation file, so a dataset folder can move
    return Sample(path, caption, question, qtype)


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
