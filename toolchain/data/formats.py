"""Dataset formats as users have them on disk: generic JSONL / CSV, MSR-VTT and VATEX annotations, and
MSRVTT-QA / MSVD-QA question-answer json.

Every reader turns one split into (video path, caption) pairs, or (video, question, answer) rows. A row that cannot be used (malformed,
a clip id that maps to no file, a missing video) is counted and skipped with its reason, never a
crash of the whole run; a split with no usable row is a DataError naming the file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.data.annotations import Sample, _check_row, parse_rows, samples_of
from toolchain.errors import DataError
from toolchain.recipe import DataSection

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
MSRVTT_SPLITS = ("train", "validate", "test")


@dataclass
class Split:
    """One split's usable pairs, what was skipped (where, reason), and the file it came from."""

    pairs: list[Sample]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_split(data: DataSection, which: str, task: str | None = None) -> Split:
    """The `train` or `eval` split of the recipe's dataset; with a task, rows it cannot use are skipped."""
    spec = getattr(data, which)
    split = READERS[data.format](data, spec, f"data.{which}")
    if task is not None:
        split = keep_for_task(split, task)
    if not split.pairs:
        head = "; ".join(f"{w}: {r}" for w, r in split.skipped[:3]) or "it has no rows"
        what = "(video, question, answer)" if task == "qa" else "(video, caption)"
        raise DataError(f"data.{which}: no usable {what} row in {split.source} "
                        f"({len(split.skipped)} skipped; {head}). Check data.format ({data.format}) "
                        "and data.video_root")
    return split


def _need_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise DataError(f"{key}: annotation file {path} not found; fix {key} in the recipe")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"annotation file {path} is not UTF-8 text ({err.reason})") from None


def _load_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"annotation file {path} is not valid JSON (line {err.lineno}: {err.msg})") from None


def _root(data: DataSection, annotation_file: Path) -> Path:
    return Path(data.video_root) if data.video_root else annotation_file.parent


def _keep_existing(pairs: list[Sample], skipped: list, where: str) -> list[Sample]:
    kept, exists = [], {}  # one stat per video, however many captions it has
    for s in pairs:
        found = exists.get(s.video)
        if found is None:
            found = exists[s.video] = s.video.is_file()
        if found:
            kept.append(s)
        else:
            skipped.append((where, f"video {s.video} not found"))
    return kept


def read_jsonl(data: DataSection, spec: str, key: str = "data.train/data.eval") -> Split:
    path = _need_file(Path(spec), key)
    root, pairs, skipped, paths = _root(data, path), [], [], {}
    for number, row, error in parse_rows(_read_text(path).splitlines()):
        try:
            if error is not None:
                raise ValueError(error)
            pairs.append(samples_of(root, paths, *_check_row(row)))
        except ValueError as err:
            skipped.append((f"{path}:{number}", f"malformed row ({err})"))
    pairs = _keep_existing(pairs, skipped, str(path))
    return Split(pairs, str(path), skipped)


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    columns = reader.fieldnames or []
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{path}: CSV needs the column(s) {', '.join(missing)} in its header line; "
                        f"it has {', '.join(columns) or 'no header'}")
    return [(number, row) for number, row in enumerate(reader, start=2)]


def read_csv(data: DataSection, spec: str, key: str = "data.train/data.eval") -> Split:
    path = _need_file(Path(spec), key)
    root, pairs, skipped, paths = _root(data, path), [], [], {}
    for number, row in _csv_rows(path, ("video", "caption")):
        video, caption = (row.get("video") or "").strip(), (row.get("caption") or "").strip()
        if not video or not caption or None in row:
            skipped.append((f"{path}:{number}", "malformed row (empty video or caption, or extra fields)"))
            continue
        pairs.append(samples_of(root, paths, video, caption))
    pairs = _keep_existing(pairs, skipped, str(path))
    return Split(pairs, str(path), skipped)


class VideoIndex:
    """Clip id -> file under a folder (any common video extension), scanned once."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise DataError(f"data.video_root: {root} is not a folder; set it to where the video files are")
        self.root = root
        self.by_stem = {p.stem: p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_EXTS}

    def pairs(self, clip_id: str, captions: list[str], skipped: list, where: str) -> list[Sample]:
        path = self.by_stem.get(clip_id)
        if path is None:
            skipped.append((where, f"clip id {clip_id!r} maps to no video file in {self.root}"))
            return []
        return [Sample(path, c) for c in captions]


def _msrvtt_captions(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """train_val_videodatainfo.json -> (captions per video id, split per video id)."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or "sentences" not in doc or "videos" not in doc:
        raise DataError(f"data.annotations: {path} is not MSR-VTT's videodatainfo json "
                        "(needs top-level keys 'videos' and 'sentences')")
    captions: dict[str, list[str]] = {}
    for s in doc["sentences"]:
        if isinstance(s, dict) and isinstance(s.get("caption"), str) and isinstance(s.get("video_id"), str):
            captions.setdefault(s["video_id"], []).append(s["caption"].strip())
    splits = {v["video_id"]: v.get("split", "") for v in doc["videos"] if isinstance(v, dict) and "video_id" in v}
    return captions, splits


def read_msrvtt(data: DataSection, spec: str, key: str = "data.train/data.eval") -> Split:
    ann = _need_file(Path(data.annotations), "data.annotations")
    captions, splits = _msrvtt_captions(ann)
    index, skipped, pairs = VideoIndex(Path(data.video_root)), [], []
    if spec.endswith(".csv"):
        path = _need_file(Path(spec), key)
        rows = _csv_rows(path, ("video_id",))
        for number, row in rows:
            vid, sentence = (row.get("video_id") or "").strip(), (row.get("sentence") or "").strip()
            where = f"{path}:{number}"
            if not vid:
                skipped.append((where, "malformed row (empty video_id)"))
            elif "sentence" in row:  # the 1k-A test file: exactly one caption per clip
                pairs += index.pairs(vid, [sentence], skipped, where) if sentence else []
            elif vid not in captions:
                skipped.append((where, f"video id {vid!r} has no caption in {ann.name}"))
            else:
                pairs += index.pairs(vid, captions[vid], skipped, where)
        return Split(pairs, str(path), skipped)
    if spec not in MSRVTT_SPLITS:
        raise DataError(f"{key}: {spec!r} is neither a CLIP4Clip split .csv nor an MSR-VTT "
                        f"split name ({', '.join(MSRVTT_SPLITS)})")
    for vid in (v for v, s in splits.items() if s == spec):
        pairs += index.pairs(vid, captions.get(vid, []), skipped, f"{ann.name}[{vid}]")
    return Split(pairs, f"{ann} (split {spec})", skipped)


def read_vatex(data: DataSection, spec: str, key: str = "data.train/data.eval") -> Split:
    path = _need_file(Path(spec), key)
    doc = _load_json(path)
    if not isinstance(doc, list):
        raise DataError(f"{path} is not a VATEX json (a list of objects with 'videoID' and 'enCap')")
    index, skipped, pairs = VideoIndex(Path(data.video_root)), [], []
    for i, item in enumerate(doc):
        where = f"{path}[{i}]"
        caps = item.get("enCap") if isinstance(item, dict) else None
        vid = item.get("videoID") if isinstance(item, dict) else None
        if not isinstance(vid, str) or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps) or not caps:
            skipped.append((where, "malformed row (needs 'videoID' and a non-empty 'enCap' list of strings)"))
            continue
        pairs += index.pairs(vid, [c.strip() for c in caps], skipped, where)
    return Split(pairs, str(path), skipped)


def msvd_names(path: Path) -> dict[str, str]:
    """MSVD's youtube_mapping.txt ("-4wsuPCjDBc_5_15 vid1" per line) as {"vid1": "-4wsuPCjDBc_5_15"}."""
    out = {}
    for line in _read_text(_need_file(path, "data.annotations")).splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


def _qa_stems(video_id, names: dict[str, str]) -> list[str]:
    """File stems a QA row's video_id may name: MSVD-QA's 1 is vid1, whose file youtube_mapping.txt names;
    MSRVTT-QA's 7010 is video7010."""
    ids = [f"vid{video_id}", f"video{video_id}", str(video_id)] if isinstance(video_id, int) else [video_id]
    return [names[i] for i in ids if i in names] + ids


def _qa_row(item, where: str, root: Path, index, names, skipped: list) -> Sample | None:
    q = item.get("question") if isinstance(item, dict) else None
    a = item.get("answer") if isinstance(item, dict) else None
    qtype = item.get("type") if isinstance(item, dict) else None
    if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip() or \
            not isinstance(qtype, (str, type(None))):
        skipped.append((where, "malformed row (needs a non-empty 'question' and 'answer')"))
        return None
    if isinstance(item.get("video"), str):
        return Sample(root / item["video"], a.strip(), q.strip(), qtype)
    vid = item.get("video_id")
    if isinstance(vid, bool) or not isinstance(vid, (int, str)):
        skipped.append((where, "malformed row (needs 'video_id' or 'video')"))
        return None
    found = next((index().by_stem[s] for s in _qa_stems(vid, names) if s in index().by_stem), None)
    if found is None:
        skipped.append((where, f"video id {vid!r} maps to no video file in {root}"))
        return None
    return Sample(found, a.strip(), q.strip(), qtype)


def read_videoqa(data: DataSection, spec: str, key: str = "data.train/data.eval") -> Split:
    """MSRVTT-QA / MSVD-QA json: a list of {"video_id" or "video", "question", "answer"} (optional "type")."""
    path = _need_file(Path(spec), key)
    doc = _load_json(path)
    if not isinstance(doc, list):
        raise DataError(f"{path} is not a video-QA json (a list of objects with video_id or video, question, answer)")
    root, skipped, pairs, found = _root(data, path), [], [], {}
    names = msvd_names(Path(data.annotations)) if data.annotations else {}

    def index() -> VideoIndex:  # scanned once, and only if a row names its clip by id
        if "index" not in found:
            found["index"] = VideoIndex(root)
        return found["index"]

    for i, item in enumerate(doc):
        row = _qa_row(item, f"{path}[{i}]", root, index, names, skipped)
        if row is not None:
            pairs.append(row)
    return Split(_keep_existing(pairs, skipped, str(path)), str(path), skipped)


def keep_for_task(split: Split, task: str) -> Split:
    """qa keeps question-answer rows, retrieval and captioning keep captions; the others are skipped."""
    kept, skipped = [], list(split.skipped)
    for s in split.pairs:
        if (s.question is not None) == (task == "qa"):
            kept.append(s)
        else:
            need = "rows with question and answer" if task == "qa" else "captions, not question-answer rows"
            skipped.append((str(s.video), f"unused row (task {task} reads {need})"))
    return Split(kept, split.source, skipped)


READERS = {"jsonl": read_jsonl, "csv": read_csv, "msrvtt": read_msrvtt, "vatex": read_vatex, "videoqa": read_videoqa}


def skip_summary(which: str, split: Split, shown: int = 3) -> str | None:
    """One line for the user: how many rows of a split were skipped, with the first few reasons."""
    if not split.skipped:
        return None
    head = "; ".join(f"{w}: {r}" for w, r in split.skipped[:shown])
    return f"{which}: skipped {len(split.skipped)} row(s) of {split.source}, e.g. {head}"
