"""Question-answer rows: jsonl QA rows, MSRVTT-QA / MSVD-QA json, the synthetic set's questions, and rows a task cannot use."""

from __future__ import annotations

import json

import pytest

from dataset_fixtures import data_settings, materialize
from toolchain.data.formats import keep_for_task, read_split
from toolchain.data.prepare import ensure_data
from toolchain.errors import DataError
from toolchain.progress import Reporter
from toolchain.recipe import DataSection, load_recipe
from toolchain.text_metrics import question_type


def section(fmt, root) -> DataSection:
    return DataSection(**{k.split(".", 1)[1]: v for k, v in (s.split("=", 1) for s in data_settings(fmt, root))})


def test_videoqa_ids_of_both_datasets_and_paths(tmp_path):
    root = materialize("videoqa", tmp_path)
    train, test = (read_split(section("videoqa", root), which, "qa") for which in ("train", "eval"))
    assert [s.video.name for s in train.pairs] == ["video0.mp4"] * 2 + ["video1.mp4"] * 2  # ids as file stems
    assert [s.video.name for s in test.pairs] == ["-4wsuPCjDBc_5_15.mp4", "video3.mp4"]  # MSVD-QA: 1 -> vid1 -> mapping
    assert [(s.question, s.caption) for s in test.pairs][0] == ("what colour is it?", "green")
    reasons = [r for _, r in train.skipped]
    assert any("video id 99 maps to no video file" in r for r in reasons) and any("malformed" in r for r in reasons)
    assert [question_type(s.question, s.qtype) for s in train.pairs] == ["what", "which", "what", "direction"]
    # MSRVTT-QA numbers its clips: video_id 3 is video3.mp4 (no MSVD mapping file)
    (tmp_path / "msrvtt_qa.json").write_text(json.dumps([{"answer": "yellow", "id": 0, "question": "what?", "video_id": 3}]))
    msrvtt = DataSection(format="videoqa", train=str(tmp_path / "msrvtt_qa.json"), video_root=str(root / "videos"))
    assert [s.video.name for s in read_split(msrvtt, "train", "qa").pairs] == ["video3.mp4"]


def test_jsonl_qa_rows_and_rows_a_task_cannot_use(tmp_path):
    rows = [{"video": "a.mp4", "question": "what colour ?", "answer": "red", "type": "colour"},
            {"video": "a.mp4", "caption": "a red circle moves left"},
            {"video": "a.mp4", "question": "no answer"},
            {"video": "a.mp4", "question": "", "answer": "x"}]
    (tmp_path / "a.mp4").write_bytes(b"not read here")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSection(train=str(tmp_path / "t.jsonl"))
    qa = read_split(data, "train", "qa")
    assert [(s.question, s.caption, s.qtype) for s in qa.pairs] == [("what colour ?", "red", "colour")]
    reasons = [r for _, r in qa.skipped]
    assert len(reasons) == 3 and "missing key 'answer'" in reasons[0] and "empty question" in reasons[1]
    assert "task qa reads rows with question and answer" in reasons[2]
    captions = keep_for_task(read_split(data, "train"), "captioning")
    assert [s.caption for s in captions.pairs] == ["a red circle moves left"]
    (tmp_path / "c.jsonl").write_text(json.dumps(rows[1]) + "\n")  # captions only
    with pytest.raises(DataError, match=r"no usable \(video, question, answer\) row .*c.jsonl"):
        read_split(DataSection(train=str(tmp_path / "c.jsonl")), "train", "qa")


def test_synthetic_set_writes_qa_rows_and_an_older_set_gets_them(shapes_data, tmp_path):
    rows = [json.loads(x) for x in (shapes_data / "eval_qa.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 48 and {r["type"] for r in rows} == {"colour", "shape", "direction"}
    captions = [json.loads(x) for x in (shapes_data / "eval.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["video"] == captions[0]["video"]]
    assert [r["answer"] for r in first] == [captions[0]["caption"].split()[i] for i in (1, 2, 4)]
    assert first[2]["question"] == "which way does the {} {} move ?".format(*captions[0]["caption"].split()[1:3])
    old = tmp_path / "old"
    old.mkdir()
    for name in ("train.jsonl", "eval.jsonl"):
        (old / name).write_text((shapes_data / name).read_text().replace('"videos/', f'"{shapes_data}/videos/'))
    recipe = load_recipe("recipes/shapes-qa-tiny.yaml", [f"data.train={old}/train_qa.jsonl", f"data.eval={old}/eval_qa.jsonl"])
    ensure_data(recipe.data, Reporter(quiet=True))  # derived from the captions, nothing rendered again
    assert not (old / "videos").exists() and len((old / "eval_qa.jsonl").read_text().splitlines()) == 144
