"""Time-reversal augmentation for captioning and QA (recipe `train.time_reversal`; torch-free).

A clip played backwards shows the opposite motion: "moves left" becomes "moves right", "opens"
becomes "closes". The recipe names such word pairs; every training row whose caption, or question
and answer, contains one of those words is also trained on its clip with the K frames reversed and
the words swapped. The pair is identical in every frame and differs only in frame order, so it
cannot be fitted from what a single frame shows (where the object starts, its size, the background):
only from the order. Rows without a pair word are left alone, since what a reversed clip of them
should say is unknown. Used as in Something-Something V2 work, where classes with a reverse
counterpart ("pushing left to right") swap labels under reversal.

The reversed clip reuses the forward clip's selected frames, in reverse order, and its per-frame
motion energies reversed with them (the energy of a frame is measured against its neighbour, so a
reversed clip's energies are the forward ones shifted by one frame: close, not bit-exact).
"""

from __future__ import annotations

import re


def symmetric_pairs(pairs: dict[str, str]) -> dict[str, str]:
    """{'left': 'right'} -> {'left': 'right', 'right': 'left'} (lower-cased); raises ValueError on a
    word given two partners or paired with itself."""
    out: dict[str, str] = {}
    for a, b in pairs.items():
        a, b = a.strip().lower(), b.strip().lower()
        if not re.fullmatch(r"[\w'-]+", a) or not re.fullmatch(r"[\w'-]+", b):
            raise ValueError(f"train.time_reversal: {a!r}: {b!r} must be two single words, e.g. {{left: right}}")
        if a == b:
            raise ValueError(f"train.time_reversal: {a!r} is paired with itself; give its reverse, e.g. {{left: right}}")
        for x, y in ((a, b), (b, a)):
            if out.get(x, y) != y:
                raise ValueError(f"train.time_reversal: {x!r} is paired with both {out[x]!r} and {y!r}; "
                                 "give each word one reverse")
            out[x] = y
    return out


def swap_words(text: str | None, pairs: dict[str, str]) -> tuple[str | None, int]:
    """The text with every pair word (whole words, any case) replaced by its partner, and how many were."""
    if text is None or not pairs:
        return text, 0
    pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(pairs, key=len, reverse=True)) + r")\b"
    return re.subn(pattern, lambda m: pairs[m.group(1).lower()], text, flags=re.IGNORECASE)


def reversed_rows(captions: list[str], questions: list[str | None], pairs: dict[str, str]):
    """[(pair index, reversed caption or answer, reversed question)] for the rows that name a pair word."""
    out = []
    for i, (caption, question) in enumerate(zip(captions, questions)):
        new_caption, n_caption = swap_words(caption, pairs)
        new_question, n_question = swap_words(question, pairs)
        if n_caption + n_question:
            out.append((i, new_caption, new_question))
    return out
