"""Caption metrics through pycocoevalcap's own scorers (no Java: only the PTB tokenizer is ours) and QA accuracy."""

from __future__ import annotations

import pytest

from toolchain.text_metrics import (caption_scores, direction_accuracy, normalize_answer, ptb_tokenize, qa_accuracy,
                                    question_type)


@pytest.mark.parametrize("text, tokens", [
    ("A man's dog doesn't run.", "a man 's dog does n't run"),  # PTB splits clitics, drops the full stop
    ('He said "hi", then (left)...', "he said hi then left"),  # quotes, brackets, ellipsis: punctuation, dropped
    ("a well-known 3.5 m ramp", "a well-known 3.5 m ramp"),  # hyphenated words and numbers stay whole
    ("  Two\nlines  ", "two lines"),
])
def test_ptb_tokenize_follows_the_coco_pipeline(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_scores_are_pycocoevalcaps_on_its_tokens():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = {0: ["A red circle moves left.", "the red ball goes left"], 1: ["a blue square moves up"],
            2: ["a green triangle moves down"]}
    hyps = {0: "a red circle moves left", 1: "a blue square moves down", 2: "a circle"}
    got = caption_scores(refs, hyps)
    gts = {k: [ptb_tokenize(r) for r in v] for k, v in refs.items()}
    res = {k: [ptb_tokenize(v)] for k, v in hyps.items()}
    assert got["bleu4"] == pytest.approx(100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-3)
    assert got["cider_d"] == pytest.approx(100 * Cider().compute_score(gts, res)[0], abs=1e-3)
    assert got["rouge_l"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0], abs=1e-3)
    perfect = caption_scores(refs, {k: v[0] for k, v in refs.items()})
    assert perfect["cider_d"] > got["cider_d"] > caption_scores(refs, {k: "" for k in refs})["cider_d"] == 0


def test_qa_accuracy_is_normalised_exact_match_per_type():
    assert normalize_answer("The LEFT!") == "left" and normalize_answer("an  old man.") == "old man"
    result = qa_accuracy(["The left.", "red", "a circle"], ["left", "blue", "circle"], ["direction", "colour", "shape"])
    assert result["accuracy"] == pytest.approx(200 / 3, abs=1e-3) and result["questions"] == 3
    assert result["by_type"]["colour"] == {"accuracy": 0.0, "questions": 1}
    assert question_type("Who is singing?") == "who" and question_type("what?", "colour") == "colour"


def test_direction_accuracy_needs_the_direction_and_no_other():
    refs = {0: ["a red circle moves left"], 1: ["a blue square moves up"], 2: ["a green square moves down"]}
    hyps = {0: "a red circle moves left", 1: "a blue square moves up or down", 2: "a green square"}
    assert direction_accuracy(refs, hyps) == pytest.approx(100 / 3, abs=1e-3)
    assert direction_accuracy({0: ["a man is cooking"]}, {0: "left"}) is None  # not the shapes grammar
