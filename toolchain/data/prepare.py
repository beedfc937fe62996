"""Make sure a jsonl recipe's annotation files exist, generating the synthetic set on first use (its
caption files DIR/train.jsonl, DIR/eval.jsonl and question-answer files DIR/train_qa.jsonl, DIR/eval_qa.jsonl)."""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import DataError
from toolchain.recipe import DataSection


SYNTH_FILES = (("train.jsonl", "eval.jsonl"), ("train_qa.jsonl", "eval_qa.jsonl"))


def ensure_data(data: DataSection, report) -> tuple[Path, Path]:
    train, evalf = Path(data.train), Path(data.eval)
    if data.format != "jsonl" or (train.is_file() and evalf.is_file()):
        return train, evalf
    folder = train.parent
    qa_only = (train.name, evalf.name) == SYNTH_FILES[1] and (folder / "train.jsonl").is_file() and \
        (folder / "eval.jsonl").is_file()
    if data.synthesize_if_missing and qa_only and train.parent == evalf.parent:
        from toolchain.data.synth import write_qa_files

        write_qa_files(folder)  # a shapes set from before QA rows: derive them from its captions
        return train, evalf
    if not data.synthesize_if_missing:
        missing = train if not train.is_file() else evalf
        raise DataError(f"data: annotation file {missing} not found; fix data.train/data.eval in the recipe")
    if train.parent != evalf.parent or (train.name, evalf.name) not in SYNTH_FILES:
        raise DataError(
            "data.synthesize_if_missing needs data.train and data.eval to be DIR/train.jsonl and DIR/eval.jsonl "
            f"(or DIR/train_qa.jsonl and DIR/eval_qa.jsonl; got {train} and {evalf}); or generate the set "
            "yourself with `vqtool data synth DIR`"
        )
    from toolchain.data.synth import synthesize

    report.say(f"generating the synthetic shapes set in {train.parent} (first use)")
    with report.task("rendering videos", None) as t:
        synthesize(train.parent, videos=data.synth_videos, seed=data.synth_seed, progress=t.progress,
                   variety=data.synth_variety)
    return train, evalf
