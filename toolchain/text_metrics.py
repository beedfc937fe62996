"""Caption and QA metrics: BLEU-4, CIDEr-D and ROUGE-L with pycocoevalcap's reference scorers, and
normalised exact-match accuracy for QA, overall and per question type.

pycocoevalcap tokenizes with Stanford's PTBTokenizer, a Java program; only that step is replaced.
`ptb_tokenize` does in Python what the COCO pipeline does with it: lower-case, split off punctuation
and English clitics as the Penn Treebank rules do ("don't" -> "do n't", "man's" -> "man 's", "end." ->
"end ."; hyphenated words and numbers stay whole), then drop the punctuation tokens pycocoevalcap
drops (its PUNCTUATIONS list, brackets included). The scorers themselves (Bleu(4), Cider with
sigma 6 and clipping, which is CIDEr-D, Rouge with beta 1.2) are pycocoevalcap's own, run without
Java. Scores are reported x100, as papers quote them.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, with the brackets PTB writes as -LRB- etc.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";", "(", ")", "[", "]", "{", "}", '"'}
_CLITICS = re.compile(r"(?i)(\w)(n't|'s|'m|'d|'re|'ve|'ll)\b")
_PUNCT = re.compile(r"(\.\.\.|--|[,;:!?\"()\[\]{}]|(?<=\w)\.(?=\s|$)|(?:(?<=\s)|^)'(?!(?:s|m|d|re|ve|ll)\b)|'(?=[\s,.;:!?)]|$))")


def ptb_tokenize(text: str) -> str:
    """One caption as pycocoevalcap's scorers expect it: lower-cased PTB tokens without punctuation."""
    text = " ".join(text.lower().replace("\n", " ").split())
    text = _CLITICS.sub(r"\1 \2", text)
    text = _PUNCT.sub(r" \1 ", text)
    return " ".join(t for t in text.split() if t not in PUNCTUATIONS)


def caption_scores(references: dict, hypotheses: dict) -> dict:
    """{id: [reference captions]}, {id: generated caption} -> BLEU-4, CIDEr-D, ROUGE-L (x100)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        from toolchain.errors import MissingExtraError

        raise MissingExtraError("pycocoevalcap", "train") from None

    gts = {k: [ptb_tokenize(r) for r in refs] for k, refs in references.items()}
    res = {k: [ptb_tokenize(hypotheses[k])] for k in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu4": round(100 * float(bleu[3]), 3), "cider_d": round(100 * float(cider), 3),
            "rouge_l": round(100 * float(rouge), 3)}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed ("The Left." -> "left")."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT_TABLE)).split())


def question_type(question: str, given: str | None = None) -> str:
    """The row's own type if it has one, else the question's first word (MSRVTT-QA's what/who/how/when/where)."""
    if given:
        return given
    words = normalize_answer(question).split()
    return words[0] if words else "other"


def qa_accuracy(predictions: list[str], answers: list[str], types: list[str]) -> dict:
    """Normalised exact-match accuracy (%) overall and per question type."""
    hits = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for t, h in zip(types, hits):
        by_type[t].append(h)
    pct = lambda xs: round(100.0 * sum(xs) / max(1, len(xs)), 3)  # noqa: E731
    return {"accuracy": pct(hits), "questions": len(hits),
            "by_type": {t: {"accuracy": pct(v), "questions": len(v)} for t, v in sorted(by_type.items())}}


def direction_accuracy(references: dict, hypotheses: dict) -> float | None:
    """Synthetic shapes only: % of clips whose caption names their direction and no other (None when the
    references are not in the shapes grammar)."""
    from toolchain.data.synth import DIRECTIONS, appearance

    truth = {}
    for k, refs in references.items():
        if any(appearance(r) is None for r in refs) or len({r.split()[-1] for r in refs}) != 1:
            return None
        truth[k] = refs[0].split()[-1]
    hits = [set(ptb_tokenize(hypotheses[k]).split()) & set(DIRECTIONS) == {d} for k, d in truth.items()]
    return round(100.0 * sum(hits) / max(1, len(hits)), 3)
